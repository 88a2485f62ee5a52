import ipaddr from 'ipaddr.js'

/**
 * Whether the server may fetch this Client ID Metadata Document at all: not when its host is
 * loopback, private, link-local or otherwise not a public unicast address, or a `localhost` name.
 * Decided from the URL before any connection is made; a public name that resolves to such an
 * address is stopped when oidc-provider's fetch connects (its SSRF guard).
 */
export function clientIdUrlAllowed (clientId: string): boolean {
  const url = URL.parse(clientId)
  if (url === null || url.protocol !== 'https:') return false
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1').replace(/\.$/, '').toLowerCase()
  if (host === 'localhost' || host.endsWith('.localhost')) return false
  if (!ipaddr.isValid(host)) return true
  return ipaddr.process(host).range() === 'unicast'
}
