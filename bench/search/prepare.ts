import { writeFile } from 'node:fs/promises'
import { prepareSearchDatabase } from './database.js'

// The search mix's seeding and migrations, run by bench/search/run.ts in a process of their own:
// `node --import tsx bench/search/prepare.ts <admin database url> <entries> <report.json>`.
// Seeding 100k notes leaves a large heap of garbage behind, and in the process that then timed the
// calls its collections held the event loop for up to 41 ms in the middle of measured rounds; the
// measuring process now starts each run with the same small heap, seeded or reused.

const [adminUrl, entries, reportFile] = process.argv.slice(2)
if (adminUrl === undefined || entries === undefined || reportFile === undefined) {
  console.error('usage: prepare.ts <admin database url> <entries> <report.json>')
  process.exit(2)
}
try {
  const migrations = await prepareSearchDatabase(adminUrl, Number(entries), console.log)
  await writeFile(reportFile, JSON.stringify(migrations) + '\n')
} catch (error) {
  console.error(`preparing the search database failed: ${error instanceof Error ? error.message : String(error)}`)
  process.exit(1)
}
