import { test } from 'tap'
import { connectInstructions } from '../server.js'
import { testDatabase } from './db-helper.js'
import { TEST_TOKEN } from './helper.js'
import { servingUrl, startServer, waitFor } from './process-helper.js'

const URL_ = 'http://127.0.0.1:3000/mcp'
const ADD = `claude mcp add --transport http shared-context ${URL_} --header "Authorization: Bearer scm_new"`

test('a new token: printed once, with the add line and how to replace an older entry', async (t) => {
  const text = connectInstructions(URL_, 'scm_new')
  t.match(text, `shared-context-mcp is serving MCP at ${URL_}\n`)
  t.match(text, /shown only now.*\n {2}scm_new\n/)
  const lines = text.split('\n').map((line) => line.trim())
  const remove = lines.indexOf('claude mcp remove shared-context')
  t.ok(remove > 0, 'says how to remove the old entry')
  t.equal(lines[remove + 1], ADD, 'then add it again with the new token')
  t.equal(lines.filter((line) => line === ADD).length, 2)
  t.notMatch(text, 'every interface', 'nothing about other machines on loopback')
})

test('no new token: a placeholder and the command that makes one', async (t) => {
  const text = connectInstructions(URL_, undefined)
  t.match(text, `claude mcp add --transport http shared-context ${URL_} --header "Authorization: Bearer <your token>"`)
  t.match(text, '`node dist/cli.js token create --name NAME`')
  t.notMatch(text, 'claude mcp remove', 'nothing to replace')
})

test('on every interface: which address other machines use', async (t) => {
  const text = connectInstructions(URL_, undefined, ['http://192.168.1.20:3000/mcp', 'http://10.0.0.5:3000/mcp'])
  t.match(text, 'from other machines, use this machine\'s address instead of 127.0.0.1:\n  http://192.168.1.20:3000/mcp\n  http://10.0.0.5:3000/mcp\n')
  t.match(text, 'Set PUBLIC_URL')
  t.match(connectInstructions(URL_, undefined, []), 'use this machine\'s address or name instead of 127.0.0.1', 'no address found: still says what to do')
})

test('a server started on 0.0.0.0 says so; with PUBLIC_URL it prints that URL only', async (t) => {
  const { url } = await testDatabase(t)
  const env = { DATABASE_URL: url, HOST: '0.0.0.0', PORT: '0', AUTH_TOKEN: TEST_TOKEN, LOG_LEVEL: 'warn' }

  const wildcard = startServer(env)
  t.teardown(() => wildcard.child.kill('SIGKILL'))
  await waitFor(wildcard, (output) => output.includes('claude mcp add'))
  t.match(servingUrl(wildcard), /^http:\/\/127\.0\.0\.1:\d+\/mcp$/)
  t.match(wildcard.stdout(), 'It listens on every interface: from other machines, use this machine')
  wildcard.child.kill('SIGTERM')
  t.equal(await wildcard.exited, 0)

  const published = startServer({ ...env, PUBLIC_URL: 'https://ctx.example.com/' })
  t.teardown(() => published.child.kill('SIGKILL'))
  await waitFor(published, (output) => output.includes('claude mcp add'))
  t.equal(servingUrl(published), 'https://ctx.example.com/mcp')
  t.match(published.stdout(), 'claude mcp add --transport http shared-context https://ctx.example.com/mcp --header')
  t.notMatch(published.stdout(), 'every interface')
  published.child.kill('SIGTERM')
  t.equal(await published.exited, 0)
})
