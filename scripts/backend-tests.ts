/**
 * Prints the test files whose outcome can depend on TEST_DATABASE_URL or REDIS_URL: those that read
 * either (or any of process.env but PATH), themselves or through a helper they import from test/.
 * CI's PostgreSQL + Redis pass runs these; the others run the same on every pass, so the embedded
 * (PGlite) pass, which runs every file, already proves them.
 *
 *   node --import tsx scripts/backend-tests.ts
 */
import { readFileSync, readdirSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const READS_BACKEND = /TEST_DATABASE_URL|REDIS_URL|process\.env(?!\.PATH\b)/
const LOCAL_IMPORT = /from '(\.{1,2}\/[^']+)'/g

/** The repository's test files (relative paths, sorted) that the PostgreSQL + Redis pass must run. */
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

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  for (const file of backendTestFiles(resolve(fileURLToPath(new URL('..', import.meta.url))))) process.stdout.write(`${file}\n`)
}
