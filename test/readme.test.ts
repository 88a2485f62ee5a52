import { readFile } from 'node:fs/promises'
import { test } from 'tap'
import { ConfigSchema } from '../schema/config.js'

test('the README\'s configuration table names every variable the server reads, and nothing else', async (t) => {
  const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8')
  const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 1))
  const documented = [...section.matchAll(/^\| `([A-Z_]+)` \|/gm)].map((match) => match[1])
  t.strictSame([...documented].sort(), Object.keys(ConfigSchema.properties).sort())
})
