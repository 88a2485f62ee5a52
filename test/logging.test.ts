import { Writable } from 'node:stream'
import { test } from 'tap'
import { buildApp, loggerOptions } from '../app.js'
import { loadConfig } from '../schema/config.js'
import { testDatabase } from './db-helper.js'
import { callTool, rpc, TEST_TOKEN } from './helper.js'

test('logs carry request ids but never tokens or stored content', async (t) => {
  const { url } = await testDatabase(t)
  const lines: string[] = []
  const stream = new Writable({ write (chunk, _encoding, done) { lines.push(String(chunk)); done() } })
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url }), {
    logger: { ...loggerOptions('trace', false), stream }
  })
  t.teardown(() => app.close())
  await app.ready()

  const secretContent = 'the launch code is 0000-SECRET-CONTENT'
  await callTool(app, 'write_context', { key: 'secret', content: secretContent })
  await callTool(app, 'read_context', { key: 'secret' })
  const wrongToken = 'wrong-token-that-must-not-be-logged-0123456789'
  t.equal((await rpc(app, 'tools/list', {}, { token: wrongToken })).statusCode, 401)
  t.equal((await rpc(app, 'tools/list', {}, { token: null })).statusCode, 401)

  await callTool(app, 'read_context', { key: 'missing' })

  const completed = lines.map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => entry.msg === 'request completed')
  const write = completed.find((entry) => entry.tool === 'write_context')
  t.match(write, { method: 'POST', url: '/mcp', statusCode: 200, principal: 'static-token', outcome: 'ok', reqId: String }, 'one line per request: principal, tool, outcome')
  t.type(write?.ms, 'number', 'with its duration')
  t.match(completed.find((entry) => entry.tool === 'read_context' && entry.outcome !== 'ok'), { outcome: 'CTX_2001', principal: 'static-token' }, 'a tool error names its code')
  t.match(completed.filter((entry) => entry.statusCode === 401), [{ outcome: 'AUTH_1002', principal: null }, { outcome: 'AUTH_1001', principal: null }], 'refusals name their code')

  const log = lines.join('')
  t.ok(lines.length > 5, 'something was logged')
  t.match(log, /"reqId"/, 'request ids are logged')
  t.notOk(log.includes(TEST_TOKEN), 'the valid token is not logged')
  t.notOk(log.includes(wrongToken), 'a wrong token is not logged')
  t.notOk(log.includes('SECRET-CONTENT'), 'stored content is not logged')
})

test('a forwarded X-Request-Id is used only when it is a sane token', async (t) => {
  const { url } = await testDatabase(t)
  const lines: string[] = []
  const stream = new Writable({ write (chunk, _encoding, done) { lines.push(String(chunk)); done() } })
  const app = await buildApp(loadConfig({ AUTH_TOKEN: TEST_TOKEN, DATABASE_URL: url }), { logger: { ...loggerOptions('debug', false), stream } })
  t.teardown(() => app.close())
  await app.inject({ method: 'GET', url: '/health', headers: { 'x-request-id': 'fly-abc.123' } })
  await app.inject({ method: 'GET', url: '/health', headers: { 'x-request-id': 'x'.repeat(500) } })
  const ids = lines.map((line) => (JSON.parse(line) as { reqId?: string }).reqId).filter((id) => id !== undefined)
  t.ok(ids.includes('fly-abc.123'), 'a sane forwarded id is kept')
  t.notOk(ids.some((id) => id.length > 128), 'an oversized one is replaced')
})
