// `npm start`'s prestart: runs `npm run build` only when dist/ is older than its sources. Even with
// nothing to do the build costs about a second (npm, then TypeScript loading itself), half of what
// a second start may take; this check reads a few hundred file times instead. Plain JavaScript,
// so that it runs before anything is compiled.
import { execFileSync } from 'node:child_process'
import { readdirSync, readFileSync, statSync, utimesSync } from 'node:fs'
import { join } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const record = join(root, 'dist/tsconfig.build.tsbuildinfo')
const SOURCE_FOLDERS = ['auth', 'oauth', 'gateway', 'live', 'plugins', 'routes', 'tools', 'db', 'schema'] // tsconfig.build.json's include

function mtimeOf (path) {
  try {
    return statSync(path).mtimeMs
  } catch {
    return undefined
  }
}

function newestSource () {
  const files = [
    ...readdirSync(root).filter((name) => name.endsWith('.ts') || /^tsconfig.*\.json$/.test(name) || name === 'package-lock.json'),
    ...SOURCE_FOLDERS.flatMap((folder) => readdirSync(join(root, folder), { recursive: true }).map((name) => join(folder, name)))
  ]
  return Math.max(...files.map((file) => mtimeOf(join(root, file)) ?? 0))
}

function templateIsCurrent () {
  const installed = JSON.parse(readFileSync(join(root, 'node_modules/@electric-sql/pglite/package.json'), 'utf8')).version
  try {
    return readFileSync(join(root, 'dist/db/pglite-template.version'), 'utf8').trim() === installed
  } catch {
    return false
  }
}

const built = mtimeOf(record)
if (built === undefined || newestSource() > built || !templateIsCurrent()) {
  execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' })
  // tsc -b leaves its record alone when a source was only touched; mark dist/ as checked now.
  const now = new Date()
  utimesSync(record, now, now)
}
