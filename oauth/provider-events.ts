import type { default as ProviderClass } from 'oidc-provider'
import type { OAuthMetrics } from '../plugins/metrics.js'

/**
 * Counts what oidc-provider reports through its events: registrations, token requests, and the
 * grants it ends — on the revocation endpoint, or when a code or refresh token comes back a
 * second time (its refresh_token and authorization_code grants revoke the grant then). Attached to
 * every provider built, since plugins/oauth.ts builds a new one when the signing keys change.
 */
export function countProviderEvents (provider: ProviderClass, metrics: OAuthMetrics): void {
  provider.on('registration_create.success', () => { metrics.registration('registered') })
  provider.on('registration_create.error', () => { metrics.registration('refused') })
  provider.on('grant.success', (ctx) => { metrics.tokensIssued(String(ctx.oidc.params?.grant_type)) })
  provider.on('grant.error', (_ctx, error) => { metrics.tokenRefused(error.error) })
  provider.on('grant.revoked', (ctx) => {
    if (ctx.oidc.route === 'revocation') {
      metrics.revocation()
      return
    }
    const grantType = ctx.oidc.params?.grant_type
    if (ctx.oidc.route === 'token' && (grantType === 'authorization_code' || grantType === 'refresh_token')) metrics.reuseDetected(grantType)
  })
}
