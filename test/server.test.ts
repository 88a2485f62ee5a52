import { test } from 'tap'
import { testDatabase } from './db-helper.js'
import { callToolOverHttp, servingUrl, startServer, waitFor } from './process-helper.js'
import { TEST_TOKEN } from './helper.js'

test('bound to a non-loopback host with no auth configured: refuses to start', async (t) => {
  const { url } = await testDatabase(t)
  const server = startServer({ DATABASE_URL: url, HOST: '0.0.0.0', PORT: '0' })
  t.equal(await server.exited, 1)
  t.match(server.stderr(), /Refusing to start/)
})

test('logs of a running server (stdout not a terminal): JSON lines at LOG_LEVEL, one per request, secrets and content redacted', async (t) => {
  const { url } = await testDatabase(t)
  const run = async (level: string) => {
    const server = startServer({ DATABASE_URL: url, PORT: '0', AUTH_TOKEN: TEST_TOKEN, LOG_LEVEL: level })
    t.teardown(() => server.child.kill('SIGKILL'))
    await waitFor(server, (output) => output.includes('serving MCP at'))
    const endpoint = servingUrl(server)
    t.equal((await callToolOverHttp(endpoint, TEST_TOKEN, 'write_context', { key: 'log/secret', content: 'classified-content-42' })).status, 200)
    t.equal((await callToolOverHttp(endpoint, 'scm_wrong-token-that-must-not-appear-0123456789', 'read_context', { key: 'x' })).status, 401)
    server.child.kill('SIGTERM')
    t.equal(await server.exited, 0)
    const jsonLines = server.stdout().split('\n').filter((line) => line.startsWith('{'))
    return { output: server.stdout() + server.stderr(), entries: jsonLines.map((line) => JSON.parse(line) as Record<string, unknown>) }
  }

  const info = await run('info')
  t.ok(info.entries.length > 0, 'JSON lines')
  t.match(info.entries.find((entry) => entry.tool === 'write_context'), { msg: 'request completed', principal: 'static-token', outcome: 'ok', statusCode: 200, reqId: String, ms: Number })
  t.match(info.entries.find((entry) => entry.statusCode === 401), { outcome: 'AUTH_1002', principal: null })
  t.notMatch(info.output, /classified-content-42/, 'content never logged')
  t.notMatch(info.output, new RegExp(TEST_TOKEN), 'the token never logged')
  t.notMatch(info.output, /scm_wrong-token-that-must-not-appear/, 'nor a wrong one')

  const warn = await run('warn')
  t.notOk(warn.entries.some((entry) => entry.msg === 'request completed'), 'LOG_LEVEL=warn: no request lines')
})

test('batched log lines: a request line reaches stdout while the server keeps running, and none is lost at SIGTERM', async (t) => {
  const { url } = await testDatabase(t)
  const server = startServer({ DATABASE_URL: url, PORT: '0', AUTH_TOKEN: TEST_TOKEN, LOG_LEVEL: 'info' })
  t.teardown(() => server.child.kill('SIGKILL'))
  await waitFor(server, (output) => output.includes('serving MCP at'))
  const endpoint = servingUrl(server)
  const completed = (): Array<Record<string, unknown>> => server.stdout().split('\n').filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => entry.msg === 'request completed')

  t.equal((await callToolOverHttp(endpoint, TEST_TOKEN, 'write_context', { key: 'log/first', content: 'one' })).status, 200)
  // Far less than a batch: written by the periodic flush, with no further request and no exit.
  await waitFor(server, () => completed().some((entry) => entry.tool === 'write_context'))
  t.equal(server.child.exitCode, null, 'the line arrived while the server runs')

  const calls = 60
  const statuses = await Promise.all(Array.from({ length: calls }, async () =>
    (await callToolOverHttp(endpoint, TEST_TOKEN, 'read_context', { key: 'log/first' })).status))
  t.same(new Set(statuses), new Set([200]))
  server.child.kill('SIGTERM')
  t.equal(await server.exited, 0)
  t.equal(completed().filter((entry) => entry.tool === 'read_context').length, calls, 'one line per request, all written by exit')
})
