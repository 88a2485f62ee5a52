import { test } from 'tap'
import { eventually } from '../eventually.js'
import { callTool } from '../helper.js'
import { instances, streamsOpen, uriOf, v1Client, v2Client } from './live-helper.js'

test('SDK v1 client subscribed on instance B is notified of a write on instance A', async (t) => {
  const { instances: [a, b] } = await instances(t, 2)
  if (a === undefined || b === undefined) throw new Error('instances missing')
  const { client, notified } = await v1Client(t, b.url)
  await client.subscribeResource({ uri: uriOf('shared/plan') })
  await streamsOpen(b.app, 1)

  await callTool(a.app, 'write_context', { key: 'shared/plan', content: 'step one' })
  await callTool(a.app, 'write_context', { key: 'shared/other', content: 'not subscribed' })
  await callTool(a.app, 'append_context', { key: 'shared/plan', content: 'step two' })
  await eventually(() => notified.filter((n) => n.method === 'notifications/resources/updated').length >= 2, { what: 'two resources/updated' })
  const updated = notified.filter((n) => n.method === 'notifications/resources/updated')
  t.same(updated, [
    { method: 'notifications/resources/updated', uri: uriOf('shared/plan'), version: 1 },
    { method: 'notifications/resources/updated', uri: uriOf('shared/plan'), version: 2 }
  ], 'only the subscribed key, once per version, in order')
  t.ok(notified.some((n) => n.method === 'notifications/resources/list_changed'), 'creating keys changes the resource list')
  const metrics = (await b.app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /^scm_live_open_streams 1$/m, 'B counts its open stream')
  t.ok(Number(/^scm_live_notifications_sent_total (\d+)$/m.exec(metrics)?.[1]) >= 3, 'and the notifications it sent')

  await client.unsubscribeResource({ uri: uriOf('shared/plan') })
  await callTool(a.app, 'delete_context', { key: 'shared/plan' })
  await callTool(a.app, 'write_context', { key: 'shared/plan', content: 'again' })
  await eventually(() => notified.filter((n) => n.method === 'notifications/resources/list_changed').length >= 2, { what: 'list_changed after the delete' })
  t.equal(notified.filter((n) => n.method === 'notifications/resources/updated').length, 2, 'no update after unsubscribing')
})

test('SDK v2 client on 2026-07-28: subscriptions/listen on instance B is notified of a write on instance A', async (t) => {
  const { instances: [a, b] } = await instances(t, 2)
  if (a === undefined || b === undefined) throw new Error('instances missing')
  const { client, notified } = await v2Client(t, b.url)
  t.equal(client.getNegotiatedProtocolVersion(), '2026-07-28', 'the client speaks 2026-07-28')
  const subscription = await client.listen({ resourceSubscriptions: [uriOf('modern/plan')], resourcesListChanged: true })
  t.same(subscription.honoredFilter, { resourceSubscriptions: [uriOf('modern/plan')], resourcesListChanged: true }, 'the filter is acknowledged')
  await eventually(() => b.app.live.counts().sinks === 1, { what: 'the listen stream to follow its namespace' })

  await callTool(a.app, 'write_context', { key: 'modern/plan', content: 'v1' })
  await callTool(a.app, 'write_context', { key: 'modern/plan', content: 'v2' })
  await eventually(() => notified.filter((n) => n.method === 'notifications/resources/updated').length >= 2, { what: 'two resources/updated' })
  t.same(notified.filter((n) => n.method === 'notifications/resources/updated'), [
    { method: 'notifications/resources/updated', uri: uriOf('modern/plan'), version: 1 },
    { method: 'notifications/resources/updated', uri: uriOf('modern/plan'), version: 2 }
  ], 'only the subscribed key, once per version, in order')
  t.ok(notified.some((n) => n.method === 'notifications/resources/list_changed'), 'list_changed for the new key')

  await subscription.close()
  t.equal(await subscription.closed, 'local', 'closed by the client')
  await eventually(() => b.app.live.counts().listenStreams === 0 && b.app.live.counts().sinks === 0, { what: 'the closed listen stream to be released' })
})
