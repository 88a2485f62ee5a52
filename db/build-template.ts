import { writeFile } from 'node:fs/promises'
import { createDataDirTemplate } from './embedded.js'

// Run by `npm run build`: an initialised PGlite data folder next to the compiled db/open.js, so
// the first `npm start` on a new DATA_DIR loads it instead of running initdb (seconds of CPU).
const target = new URL('./pglite-template.tar', import.meta.url)
const template = await createDataDirTemplate()
await writeFile(target, Buffer.from(await template.arrayBuffer()))
