import type { RateLimitTier } from './principal.js'

/** Requests allowed per window; an absent window is not limited. */
export interface WindowLimits {
  perMinute?: number
  perHour?: number
}

export interface RateLimits {
  tiers: Record<RateLimitTier, WindowLimits>
  /** Failed authentication attempts allowed per client address. */
  ip: WindowLimits
}

const TIERS: readonly RateLimitTier[] = ['admin', 'writer', 'reader', 'default']
const NAMES = [...TIERS, 'ip'] as const
type Name = typeof NAMES[number]

// What an entry left out of RATE_LIMITS gets: tiers inherit `default`; `default` and `ip` keep
// these, so leaving something out never makes it unlimited.
const FALLBACK_DEFAULT: WindowLimits = { perHour: 1000, perMinute: 60 }
const FALLBACK_IP: WindowLimits = { perMinute: 300 }

const WINDOW = /^(\d{1,9})\/([mh])$/

/**
 * Parses RATE_LIMITS: `off`, or `;`-separated entries `name=N/h N/m` where name is a tier (admin,
 * writer, reader, default) or `ip`, and either window may be left out.
 */
export function parseRateLimits (value: string): { limits: RateLimits | 'off', problems: string[] } {
  const problems: string[] = []
  if (value.trim().toLowerCase() === 'off') return { limits: 'off', problems }
  const given = new Map<Name, WindowLimits>()
  for (const rawEntry of value.split(';')) {
    const entry = rawEntry.trim()
    if (entry === '') continue
    const shown = JSON.stringify(entry.slice(0, 80))
    const equals = entry.indexOf('=')
    const name = (equals === -1 ? entry : entry.slice(0, equals)).trim().toLowerCase()
    if (equals === -1 || !(NAMES as readonly string[]).includes(name)) {
      problems.push(`RATE_LIMITS: ${shown} is not name=N/h N/m with name one of ${NAMES.join(', ')}`)
      continue
    }
    if (given.has(name as Name)) {
      problems.push(`RATE_LIMITS: ${name} is given more than once`)
      continue
    }
    const windows: WindowLimits = {}
    const specs = entry.slice(equals + 1).trim().split(/\s+/).filter((spec) => spec !== '')
    if (specs.length === 0) problems.push(`RATE_LIMITS: ${shown} gives no limit; write N/h, N/m or both`)
    for (const spec of specs) {
      const match = WINDOW.exec(spec)
      if (match === null) {
        problems.push(`RATE_LIMITS: ${shown} is not N/h or N/m`)
        break
      }
      const count = Number(match[1])
      const field = match[2] === 'm' ? 'perMinute' : 'perHour'
      if (count < 1) problems.push(`RATE_LIMITS: ${shown}: a limit must be at least 1 (use RATE_LIMITS=off to turn limiting off)`)
      else if (windows[field] !== undefined) problems.push(`RATE_LIMITS: ${shown} gives the per-${match[2] === 'm' ? 'minute' : 'hour'} limit twice`)
      else windows[field] = count
    }
    given.set(name as Name, windows)
  }
  const fallback = given.get('default') ?? FALLBACK_DEFAULT
  const tiers = Object.fromEntries(TIERS.map((tier) => [tier, given.get(tier) ?? fallback])) as Record<RateLimitTier, WindowLimits>
  return { limits: { tiers, ip: given.get('ip') ?? FALLBACK_IP }, problems }
}

/** The problems of a RATE_LIMITS value, for loadConfig. */
export function rateLimitsProblems (value: unknown): string[] {
  return typeof value === 'string' ? parseRateLimits(value).problems : []
}
