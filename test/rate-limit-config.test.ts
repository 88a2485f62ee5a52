import { test } from 'tap'
import { ConfigError, ConfigSchema, loadConfig } from '../schema/config.js'
import { parseRateLimits } from '../schema/rate-limits.js'

function problemsOf (value: string): string[] {
  try {
    loadConfig({ RATE_LIMITS: value })
    return []
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    return error.problems
  }
}

test('the default RATE_LIMITS', async (t) => {
  const { limits, problems } = parseRateLimits(ConfigSchema.properties.RATE_LIMITS.default as string)
  t.same(problems, [])
  t.same(limits, {
    tiers: {
      admin: { perHour: 20000, perMinute: 1200 },
      writer: { perHour: 10000, perMinute: 600 },
      reader: { perHour: 5000, perMinute: 300 },
      default: { perHour: 1000, perMinute: 60 }
    },
    ip: { perMinute: 300 }
  })
  t.equal(loadConfig({}).RATE_LIMITS, ConfigSchema.properties.RATE_LIMITS.default, 'loadConfig accepts it')
})

test('RATE_LIMITS forms', async (t) => {
  t.same(parseRateLimits('off'), { limits: 'off', problems: [] })
  t.same(parseRateLimits(' OFF ').limits, 'off')
  const { limits, problems } = parseRateLimits(' writer=5/m ;reader = 7/h  3/m; default=100/h;')
  t.same(problems, [])
  if (limits === 'off') throw new Error('unexpected off')
  t.same(limits.tiers.writer, { perMinute: 5 }, 'a window left out is not limited')
  t.same(limits.tiers.reader, { perHour: 7, perMinute: 3 }, 'spaces around = and between windows are fine')
  t.same(limits.tiers.admin, { perHour: 100 }, 'a tier left out inherits default')
  t.same(limits.ip, { perMinute: 300 }, 'ip left out keeps its built-in budget')
  const bare = parseRateLimits('admin=1/m').limits
  t.same(bare !== 'off' && bare.tiers.reader, { perHour: 1000, perMinute: 60 }, 'without default, tiers left out get the built-in default, never unlimited')
})

test('RATE_LIMITS problems are listed by loadConfig, each naming the entry', async (t) => {
  t.same(problemsOf('writer=abc'), ['RATE_LIMITS: "writer=abc" is not N/h or N/m'])
  t.same(problemsOf('writer=10/d'), ['RATE_LIMITS: "writer=10/d" is not N/h or N/m'])
  t.same(problemsOf('boss=10/m'), ['RATE_LIMITS: "boss=10/m" is not name=N/h N/m with name one of admin, writer, reader, default, ip'])
  t.same(problemsOf('10/m'), ['RATE_LIMITS: "10/m" is not name=N/h N/m with name one of admin, writer, reader, default, ip'])
  t.same(problemsOf('reader=0/m'), ['RATE_LIMITS: "reader=0/m": a limit must be at least 1 (use RATE_LIMITS=off to turn limiting off)'])
  t.same(problemsOf('reader=1/m 2/m'), ['RATE_LIMITS: "reader=1/m 2/m" gives the per-minute limit twice'])
  t.same(problemsOf('reader=1/m; reader=2/h'), ['RATE_LIMITS: reader is given more than once'])
  t.same(problemsOf('ip='), ['RATE_LIMITS: "ip=" gives no limit; write N/h, N/m or both'])
  t.same(problemsOf('writer=abc; ip=0/h'), [
    'RATE_LIMITS: "writer=abc" is not N/h or N/m',
    'RATE_LIMITS: "ip=0/h": a limit must be at least 1 (use RATE_LIMITS=off to turn limiting off)'
  ], 'every problem is listed')
})
