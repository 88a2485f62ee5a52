/**
 * Prints the test files CI's second pass runs against the embedded database (PGlite), which is what
 * `npm start` uses without DATABASE_URL. CI's first pass runs every file (`npm test`) against this
 * machine's PostgreSQL and Redis; this one proves on PGlite what can differ between the two: the SQL
 * of every store and tool, the migrations, search, and the files that branch on the backend
 * (ON_PGLITE). The files above the stores (HTTP, auth, the OAuth screens, the gateway's calls, the
 * CLI) send the same statements through them, so the first pass proves them once. A file that uses
 * neither the test database nor Redis behaves the same on both passes and is not repeated.
 *
 *   node --import tsx scripts/embedded-pass-tests.ts
 */
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const READS_BACKEND = /TEST_DATABASE_URL|REDIS_URL|process\.env(?!\.PATH\b)/
const LOCAL_IMPORT = /from '(\.{1,2}\/[^']+)'/g
/** The stores' own tests, the tools' (each tool's SQL and search ranking), and every other store's. */
const STORE_LEVEL = /^test\/(db|tools)\/|-store\.test\.ts$/
const BRANCHES_ON_BACKEND = /\bON_PGLITE\b/
/**
 * Store SQL without a store-level file of its own: the OAuth store (the SDK's whole authorization
 * flow walks it), the backup format's reads and writes, the expiry sweep.
 */
const ALSO = new Set(['test/oauth/sdk-flow.test.ts', 'test/export-import.test.ts', 'test/expiry.test.ts'])

/** The repository's test files (relative paths, sorted) whose outcome can depend on TEST_DATABASE_URL or REDIS_URL. */
export function backendTestFiles (root: string): string[] {
  const testDir = join(root, 'test')
  const verdicts = new Map<string, boolean>()

  function dependsOnBackend (file: string): boolean {
    const known = verdicts.get(file)
    if (known !== undefined) return known
    verdicts.set(file, false) // an import cycle adds nothing
    const text = readFileSync(file, 'utf8')
    const imported = [...text.matchAll(LOCAL_IMPORT)]
      .map((match) => resolve(dirname(file), (match[1] ?? '').replace(/\.js$/, '.ts')))
      .filter((path) => path.startsWith(testDir + '/'))
    const verdict = READS_BACKEND.test(text) || imported.some(dependsOnBackend)
    verdicts.set(file, verdict)
    return verdict
  }

  return readdirSync(testDir, { recursive: true, encoding: 'utf8' })
    .filter((path) => path.endsWith('.test.ts'))
    .map((path) => join(testDir, path))
    .filter(dependsOnBackend)
    .map((file) => relative(root, file))
    .sort()
}

/** The files of CI's embedded pass (relative paths, sorted). */
export function embeddedPassFiles (root: string): string[] {
  return backendTestFiles(root).filter((file) =>
    STORE_LEVEL.test(file) || ALSO.has(file) || BRANCHES_ON_BACKEND.test(readFileSync(join(root, file), 'utf8')))
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  for (const file of embeddedPassFiles(resolve(fileURLToPath(new URL('..', import.meta.url))))) process.stdout.write(`${file}\n`)
}
