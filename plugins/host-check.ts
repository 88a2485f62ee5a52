import { isIP } from 'node:net'
import { localhostAllowedHostnames, validateHostHeader } from '@modelcontextprotocol/server'
import type { FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { isLoopbackHost, splitList, type Config } from '../schema/config.js'
import { AppError } from '../schema/errors.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** false: any Host is served (/health, which platform probes call by the machine's address). */
    checkHost?: boolean
    /** false: any browser Origin is served (public documents meant for every origin, such as /.well-known). */
    checkOrigin?: boolean
  }
}

const HOST_VERDICTS_MAX = 1000

function hostnameOf (url: string): string | undefined {
  try {
    return new URL(url).hostname
  } catch {
    return undefined
  }
}

/** scheme://host[:port] of a URL, with the default port left out as browsers send it; undefined when it is no http(s) URL. */
export function originOf (url: string): string | undefined {
  try {
    const parsed = new URL(url)
    return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed.origin : undefined
  } catch {
    return undefined
  }
}

/** Host names accepted in the Host header; undefined means "do not check" (see below). */
export function allowedHostnames (config: Pick<Config, 'ALLOWED_HOSTS' | 'PUBLIC_URL' | 'HOST'>): string[] | undefined {
  const configured = [...splitList(config.ALLOWED_HOSTS), ...(config.PUBLIC_URL === undefined ? [] : [hostnameOf(config.PUBLIC_URL)])]
    .filter((host): host is string => host !== undefined)
  // DNS rebinding targets servers on loopback. A server bound to all interfaces without a known
  // public name cannot tell good Host values from bad ones; it requires a token instead.
  if (configured.length === 0 && !isLoopbackHost(config.HOST)) return undefined
  return [...localhostAllowedHostnames(), ...configured]
}

/**
 * Whether a Host header names an IP address (`10.0.0.5:3000`, `[fdaa::3]:3000`). DNS rebinding
 * needs a name that the attacker's DNS points at this server, and the browser sends that name as
 * Host; a page that sends an IP literal was loaded from this server's own address. Platform probes
 * (Fly's health checks) call a machine by its address, so these are served.
 */
export function isIpLiteralHost (host: string | undefined): boolean {
  if (host === undefined) return false
  const bracketed = /^\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?$/.exec(host)
  if (bracketed !== null) return isIP(bracketed[1] as string) === 6
  return isIP(host.replace(/:\d{1,5}$/, '')) === 4
}

/** The browser origins configured exactly: CORS_ORIGINS and PUBLIC_URL's origin. */
export function allowedOrigins (config: Pick<Config, 'CORS_ORIGINS' | 'PUBLIC_URL'>): Set<string> {
  return new Set([...splitList(config.CORS_ORIGINS), ...(config.PUBLIC_URL === undefined ? [] : [config.PUBLIC_URL])]
    .map(originOf)
    .filter((origin): origin is string => origin !== undefined))
}

/**
 * DNS-rebinding and cross-origin protection for every route, /mcp, /metrics, /ready,
 * /.well-known/* and unknown paths alike: a Host header that is not a loopback name, an IP address,
 * PUBLIC_URL's host or in ALLOWED_HOSTS is refused with 403 AUTH_1005, and so is a browser Origin that is not
 * exactly (scheme, host and port) one of CORS_ORIGINS, PUBLIC_URL's origin, or the origin the
 * request itself was sent to (a page served by this server). Requests without Origin (every
 * non-browser client) pass the Origin check. Registered before every other plugin with hooks, so a
 * refused request costs no token lookup.
 */
export default fp(async (fastify) => {
  const { config } = fastify
  const hostnames = allowedHostnames(config)
  const origins = allowedOrigins(config)
  if (hostnames === undefined) {
    fastify.log.warn(`Host header checks are off: HOST is ${config.HOST} and neither PUBLIC_URL nor ALLOWED_HOSTS is set`)
  }

  function originAllowed (request: FastifyRequest, origin: string): boolean {
    const normalized = originOf(origin)
    if (normalized === undefined) return false // "null" (opaque origins) and anything unparsable
    if (origins.has(normalized)) return true
    // Same origin: only when the Host was checked, else an attacker's Host would vouch for its own Origin.
    return hostnames !== undefined && normalized === originOf(`${request.protocol}://${request.headers.host ?? ''}`)
  }

  // Verdicts per Host value: clients send the same one or two values on every request, and
  // validateHostHeader parses a URL each time. Bounded, so that junk Host values cannot grow it.
  const hostVerdicts = new Map<string, boolean>()
  function hostAllowed (host: string | undefined): boolean {
    if (hostnames === undefined) return true
    if (host === undefined) return false
    let allowed = hostVerdicts.get(host)
    if (allowed === undefined) {
      allowed = validateHostHeader(host, hostnames).ok || isIpLiteralHost(host)
      if (hostVerdicts.size >= HOST_VERDICTS_MAX) hostVerdicts.clear()
      hostVerdicts.set(host, allowed)
    }
    return allowed
  }

  // Callback style: an async hook costs a promise per request on every route.
  fastify.addHook('onRequest', (request, _reply, done) => {
    // The route's exemptions are looked up only for a refused request: routeOptions allocates.
    if (!hostAllowed(request.headers.host) && request.routeOptions.config.checkHost !== false) {
      done(new AppError('AUTH_1005', 'Host header not allowed. Add the host name to ALLOWED_HOSTS (or set PUBLIC_URL).'))
      return
    }
    const origin = request.headers.origin
    if (origin !== undefined && !originAllowed(request, origin) && request.routeOptions.config.checkOrigin !== false) {
      done(new AppError('AUTH_1005', 'Origin not allowed: it must match one of CORS_ORIGINS (or PUBLIC_URL) exactly, scheme, host and port. Add it to CORS_ORIGINS to let a browser app call this server.'))
      return
    }
    done()
  })
}, { name: 'host-check', dependencies: ['config'] })
