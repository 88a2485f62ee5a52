import { test } from 'tap'
import { build, callTool, toolErrorOf } from '../helper.js'

// The lost-update test that matters: 20 writers each read, increment and compare-and-set a counter,
// retrying on conflict. With no lost update the counter ends at 20 and every version is a win.
test('20 writers incrementing one counter with compare-and-set lose no update', async (t) => {
  const app = await build(t)
  await callTool(app, 'write_context', { key: 'counter', content: '0' })

  async function increment (): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      const read = await callTool(app, 'read_context', { key: 'counter' })
      const { content, version } = read.structuredContent as { content: string, version: number }
      const written = await callTool(app, 'write_context', { key: 'counter', content: String(Number(content) + 1), expected_version: version })
      if (written.isError !== true) return attempt
      const code = toolErrorOf(written)?.code
      if (code !== 'CTX_2002') throw new Error(`unexpected ${code}`)
    }
  }

  const attempts = await Promise.all(Array.from({ length: 20 }, increment))
  const final = await callTool(app, 'read_context', { key: 'counter' })
  t.equal(final.structuredContent.content, '20', 'every increment landed')
  t.equal(final.structuredContent.version, 21, 'one version per increment')
  t.ok(attempts.some((n) => n > 1), 'writers really collided and retried')

  const history = await callTool(app, 'context_history', { key: 'counter', limit: 100 })
  const versions = (history.structuredContent.versions as Array<{ version: number }>).map((v) => v.version)
  t.same(versions, Array.from({ length: 21 }, (_, i) => 21 - i), 'history holds versions 21..1, each once')
  const contents = await Promise.all(versions.map(async (version) => (await callTool(app, 'read_context', { key: 'counter', version })).structuredContent.content))
  t.same(contents, versions.map((version) => String(version - 1)), 'version n holds the value n-1: each win built on the previous one')
})
