import { existsSync, readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

// Run by `npm run build`: an initialised PGlite data folder next to the compiled db/open.js, so
// the first `npm start` on a new DATA_DIR loads it instead of running initdb (seconds of CPU).
// It depends only on the PGlite version (migrations run later, on the copy), so a build with the
// same version keeps it: a second `npm start` does not spend those seconds again.
const target = new URL('./pglite-template.tar', import.meta.url)
const stamp = new URL('./pglite-template.version', import.meta.url)

/** The installed PGlite's version, from the package.json above its entry point (its exports hide that file). */
function pgliteVersion (): string {
  let dir = dirname(fileURLToPath(import.meta.resolve('@electric-sql/pglite')))
  for (;;) {
    const file = join(dir, 'package.json')
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string, version?: string }
      if (pkg.name === '@electric-sql/pglite' && pkg.version !== undefined) return pkg.version
    }
    const parent = dirname(dir)
    if (parent === dir) throw new Error('cannot find the package.json of @electric-sql/pglite')
    dir = parent
  }
}

const version = pgliteVersion()
if (existsSync(target) && existsSync(stamp) && readFileSync(stamp, 'utf8') === version) {
  process.stdout.write(`dist/db/pglite-template.tar is current (PGlite ${version})\n`)
} else {
  // Imported only now: loading PGlite costs more than the check above.
  const { createDataDirTemplate } = await import('./embedded.js')
  const template = await createDataDirTemplate()
  await writeFile(target, Buffer.from(await template.arrayBuffer()))
  await writeFile(stamp, version)
}
