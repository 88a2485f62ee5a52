import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { test } from 'tap'

const root = fileURLToPath(new URL('..', import.meta.url))
// Where text meant for people lives: error messages, start-up output, usage, the README.
const SOURCES = ['plugins', 'routes', 'db', 'tools', 'auth', 'schema', 'scripts', 'server.ts', 'cli.ts', 'app.ts', 'README.md', 'Dockerfile', 'fly.toml']

function filesUnder (path: string): string[] {
  if (statSync(path).isDirectory()) return readdirSync(path).flatMap((name) => filesUnder(join(path, name)))
  return /\.(ts|md|toml)$|Dockerfile$/.test(path) ? [path] : []
}

test('every CLI hint is a command that runs as printed (node dist/cli.js …), never a bare `cli token create`', async (t) => {
  const bare = [
    /(?<!dist\/|npm run )\bcli (serve|migrate|token|export|import)\b/, // "cli token create"
    /`(token (create|list|revoke|revoke-jti)|migrate|export|import) [-<>]/ // "`token create --name …`" (naming a command, "`token list`", is fine)
  ]
  const found: string[] = []
  const files = SOURCES.flatMap((source) => filesUnder(join(root, source)))
  t.ok(files.length > 20, `${files.length} files scanned`)
  for (const file of files) {
    readFileSync(file, 'utf8').split('\n').forEach((line, index) => {
      if (file.endsWith('.ts') && /^\s*(\/\/|\/\*|\*)/.test(line)) return // comments are for developers
      if (bare.some((pattern) => pattern.test(line))) found.push(`${relative(root, file)}:${index + 1}: ${line.trim()}`)
    })
  }
  t.strictSame(found, [], 'no hint without the program that runs it')

  const hinted = readFileSync(join(root, 'plugins/auth.ts'), 'utf8')
  t.match(hinted, '`node dist/cli.js token create --name NAME`', 'the refusals name the runnable form')
  t.match(readFileSync(join(root, 'tsconfig.json'), 'utf8'), /"outDir": "dist",\s+"rootDir": "\."/, 'and cli.ts compiles to dist/cli.js')
})
