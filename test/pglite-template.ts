import { randomBytes } from 'node:crypto'
import { readFile, rename, rm, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { createDataDirTemplate } from '../db/embedded.js'

// Apart from db-helper.ts, which follows the test backend's settings: a test that only needs an embedded
// database imports this: it is on PGlite on every pass, so CI runs it once (scripts/embedded-pass-tests.ts).

let template: Promise<Blob> | undefined

/**
 * A freshly initialised PGlite data folder as a tarball, made once per PGlite version and kept in
 * the OS temp folder: loading it takes a fraction of the seconds initdb needs for every database.
 */
export async function pgliteTemplate (): Promise<Blob> {
  template ??= (async () => {
    const require = createRequire(import.meta.url)
    const packageJson = join(dirname(require.resolve('@electric-sql/pglite')), '..', 'package.json')
    const { version } = JSON.parse(await readFile(packageJson, 'utf8')) as { version: string }
    const path = join(tmpdir(), `scm-pglite-template-${version}.tar`)
    try {
      return new Blob([await readFile(path)])
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error
    }
    const tarball = await createDataDirTemplate()
    // Test files run in parallel: write aside, then rename, so nobody reads half a file.
    const staging = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`
    await writeFile(staging, Buffer.from(await tarball.arrayBuffer()))
    await rename(staging, path).catch(async (error: unknown) => {
      await rm(staging, { force: true })
      throw error
    })
    return tarball
  })()
  return await template
}
