const LOOPBACK_HOSTS = new Set(['127.0.0.1', '[::1]', 'localhost'])

/** Whether a redirect URI points back at the user's own machine (a native app's loopback listener, RFC 8252 §7.3). */
export function isLoopbackRedirect (uri: string): boolean {
  const url = URL.parse(uri)
  return url !== null && url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname)
}

/**
 * Why a client may not register this redirect URI, or undefined when it may: https anywhere, or
 * http on a loopback address (then any port matches, for native apps). Never a fragment or
 * credentials in it. Applied to registered clients and Client ID Metadata Documents alike.
 */
export function redirectUriProblem (uri: string): string | undefined {
  if (uri.length > 2000) return 'redirect_uris must be at most 2000 characters'
  const url = URL.parse(uri)
  if (url === null) return 'redirect_uris must be absolute URLs'
  if (uri.includes('#')) return 'redirect_uris must not contain a fragment'
  if (url.username !== '' || url.password !== '') return 'redirect_uris must not contain credentials'
  if (url.protocol === 'https:') return undefined
  if (url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname)) return undefined
  return `redirect_uris must be https URLs, or http URLs on a loopback address (127.0.0.1, [::1], localhost): ${url.protocol.replace(/:$/, '')} on ${url.hostname === '' ? 'no host' : url.hostname} is not allowed`
}
