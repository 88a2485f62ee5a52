import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import formbody from '@fastify/formbody'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { default as ProviderClass } from 'oidc-provider'
import type { ApiTokenRecord } from '../db/token-store.js'
import type { OAuthStore } from '../db/oauth-store.js'
import type { OAuthMetrics } from '../plugins/metrics.js'
import { NAMESPACE_PATTERN } from '../schema/key.js'
import { AppError } from '../schema/errors.js'
import { originOf } from '../plugins/host-check.js'
import { verifyOwnerPassword } from './owner-password.js'
import { isLoopbackRedirect } from './redirect-uris.js'
import { pageHeaders, renderConsentPage, renderErrorPage } from './pages.js'
import { INTERACTION_PATH } from './provider.js'
import { isContextScope } from '../schema/principal.js'

const ConsentFormSchema = Type.Object({
  csrf: Type.String({ maxLength: 128 }),
  decision: Type.Union([Type.Literal('allow'), Type.Literal('deny')]),
  scope: Type.Optional(Type.Union([Type.String({ maxLength: 64 }), Type.Array(Type.String({ maxLength: 64 }), { maxItems: 100 })])),
  namespace: Type.Optional(Type.String({ maxLength: 255 })),
  password: Type.Optional(Type.String({ maxLength: 1024 })),
  token: Type.Optional(Type.String({ maxLength: 16 * 1024 }))
}, { additionalProperties: false })
type ConsentForm = Static<typeof ConsentFormSchema>

const ParamsSchema = Type.Object({ uid: Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9_-]+$' }) })
type Params = Static<typeof ParamsSchema>

const NAMESPACE = new RegExp(NAMESPACE_PATTERN)
const DEFAULT_NAMESPACE = 'default'

export interface SignedIn {
  /** The `sub` of the tokens: `owner`, or `token:<name>` for an API token. */
  subject: string
  apiToken: ApiTokenRecord | undefined
}

export interface InteractionRoutesOptions {
  provider: () => ProviderClass
  store: OAuthStore
  resource: string
  /** The scopes the page may grant: the context ones and the gateway's (grantableScopes in auth/roles.ts). */
  grantableScopes: readonly string[]
  /** A secret every instance shares (the cookie key): consent forms carry an HMAC of their interaction made with it. */
  formSecret: () => string
  /** The active API token with this value, or null. */
  findApiToken: (token: string) => Promise<ApiTokenRecord | null>
  /** Counts the owner's decisions and failed sign-ins. */
  metrics: Pick<OAuthMetrics, 'authorization' | 'signInFailure'>
}

type Details = Awaited<ReturnType<ProviderClass['interactionDetails']>>

class PageError extends Error {
  /** credentialsRejected: the password or token typed in was wrong (the page marks that field). */
  constructor (message: string, readonly statusCode: number, readonly credentialsRejected = false) {
    super(message)
  }
}

function requestedScopes (details: Details): Set<string> {
  const scope = typeof details.params.scope === 'string' ? details.params.scope : ''
  return new Set(scope.split(' ').filter((value) => value.length > 0))
}

/**
 * The scopes the page offers: those of ours the client asked for (a token never carries more than
 * was asked: oidc-provider filters the grant by the request), or all of them when it asked for none.
 */
function offeredScopes (details: Details, grantable: readonly string[]): string[] {
  const requested = requestedScopes(details)
  const asked = grantable.filter((scope) => requested.has(scope))
  return asked.length > 0 ? asked : [...grantable]
}

/**
 * The scopes an API token may hand on: its own; an admin token every grantable context scope too
 * (context:admin covers no other domain's: an hr:write it lacks it cannot hand on).
 */
function scopesOfToken (token: ApiTokenRecord, grantable: readonly string[]): Set<string> {
  const admin = token.scopes.includes('context:admin') || token.globalAdmin
  return new Set([...token.scopes, ...(admin ? grantable.filter(isContextScope) : [])])
}

/**
 * The consent page (GET) and its form (POST) for the built-in authorization server: the owner
 * signs in — with the owner password or an API token — sees the client's name and where it sends
 * them back, picks scopes and a namespace, and allows or denies. Bound to the interaction's
 * cookie (oidc-provider), protected from cross-site posts by an HMAC of the interaction in the
 * form and SameSite cookies, sign-in attempts counted against the address's failed-authentication
 * budget.
 */
export async function interactionRoutes (fastify: FastifyInstance, options: InteractionRoutesOptions): Promise<void> {
  const { store, resource } = options
  const { addressBudget } = fastify.rateLimits
  await fastify.register(formbody, { bodyLimit: 32 * 1024 })

  function csrfTokenFor (uid: string): string {
    return createHmac('sha256', options.formSecret()).update(`consent:${uid}`).digest('base64url')
  }

  function sendPage (reply: FastifyReply, statusCode: number, html: string, nonce: string, formTargets: string[]): FastifyReply {
    return reply.code(statusCode).headers(pageHeaders(nonce, formTargets)).send(html)
  }

  function sendError (reply: FastifyReply, statusCode: number, message: string): FastifyReply {
    const nonce = randomBytes(16).toString('base64')
    return sendPage(reply, statusCode, renderErrorPage('sign-in failed', message, nonce), nonce, [])
  }

  async function detailsOf (request: FastifyRequest<{ Params: Params }>, reply: FastifyReply): Promise<Details> {
    let details: Details
    try {
      details = await options.provider().interactionDetails(request.raw, reply.raw)
    } catch {
      throw new PageError('This sign-in has expired or was started in another browser. Start connecting again from your client.', 400)
    }
    if (details.uid !== request.params.uid) throw new PageError('This sign-in page does not belong to the sign-in in progress. Start connecting again from your client.', 400)
    return details
  }

  async function showPage (request: FastifyRequest<{ Params: Params }>, reply: FastifyReply, details: Details, form: Partial<ConsentForm>, error: PageError | undefined): Promise<FastifyReply> {
    const clientId = String(details.params.client_id)
    const client = await options.provider().Client.find(clientId)
    const redirectUri = String(details.params.redirect_uri)
    const chosen = form.csrf === undefined ? undefined : new Set([form.scope ?? []].flat())
    const nonce = randomBytes(16).toString('base64')
    const html = renderConsentPage({
      action: `${INTERACTION_PATH}/${details.uid}`,
      csrfToken: csrfTokenFor(details.uid),
      nonce,
      serverHost: new URL(options.provider().issuer).host,
      clientName: client?.clientName ?? clientId,
      clientUrl: clientId.startsWith('https://') ? clientId : undefined,
      redirectHost: URL.parse(redirectUri)?.host ?? redirectUri,
      redirectIsLoopback: isLoopbackRedirect(redirectUri),
      scopes: offeredScopes(details, options.grantableScopes).map((scope) => ({ scope, checked: chosen === undefined || chosen.has(scope) })),
      namespace: form.namespace ?? DEFAULT_NAMESPACE,
      ownerPasswordSet: await store.ownerPasswordHash() !== null,
      signInWith: form.token !== undefined && form.token !== '' ? 'token' : 'password',
      error: error?.message,
      credentialsRejected: error?.credentialsRejected ?? false
    })
    const redirectOrigin = originOf(redirectUri)
    return sendPage(reply, error?.statusCode ?? 200, html, nonce, redirectOrigin === undefined ? [] : [redirectOrigin])
  }

  async function signIn (request: FastifyRequest, reply: FastifyReply, form: ConsentForm): Promise<SignedIn> {
    const password = form.password ?? ''
    const token = form.token ?? ''
    if (password === '' && token === '') throw new PageError('Enter the owner password or an API token to sign in.', 400)
    await addressBudget.check(request, reply)
    let signedIn: SignedIn | undefined
    if (password !== '') {
      const stored = await store.ownerPasswordHash()
      if (stored !== null && await verifyOwnerPassword(password, stored)) signedIn = { subject: 'owner', apiToken: undefined }
    } else {
      const record = await options.findApiToken(token)
      if (record !== null) signedIn = { subject: `token:${record.name}`, apiToken: record }
    }
    if (signedIn === undefined) {
      options.metrics.signInFailure(password !== '' ? 'password' : 'api_token')
      await addressBudget.countFailure(request, new AppError('AUTH_1002', 'wrong credentials'))
      throw new PageError(password !== '' ? 'That is not the owner password. Type it again.' : 'That API token is not valid (wrong, revoked, or from another server).', 401, true)
    }
    return signedIn
  }

  async function finish (request: FastifyRequest, reply: FastifyReply, result: Record<string, unknown>): Promise<FastifyReply> {
    const returnTo = await options.provider().interactionResult(request.raw, reply.raw, result, { mergeWithLastSubmission: false })
    return reply.redirect(returnTo, 303)
  }

  fastify.get<{ Params: Params }>(`${INTERACTION_PATH}/:uid`, { schema: { params: ParamsSchema }, attachValidation: true }, async (request, reply) => {
    if (request.validationError !== undefined) return sendError(reply, 400, 'This sign-in link is malformed. Start connecting again from your client.')
    try {
      return await showPage(request, reply, await detailsOf(request, reply), {}, undefined)
    } catch (error) {
      if (error instanceof PageError) return sendError(reply, error.statusCode, error.message)
      throw error
    }
  })

  fastify.post<{ Params: Params, Body: ConsentForm }>(`${INTERACTION_PATH}/:uid`, { schema: { params: ParamsSchema, body: ConsentFormSchema }, attachValidation: true }, async (request, reply) => {
    if (request.validationError !== undefined) return sendError(reply, 400, 'The form was not filled in as this page sends it. Start connecting again from your client.')
    let details: Details
    try {
      details = await detailsOf(request, reply)
    } catch (error) {
      if (error instanceof PageError) return sendError(reply, error.statusCode, error.message)
      throw error
    }
    const form = request.body
    const expected = Buffer.from(csrfTokenFor(details.uid))
    const presented = Buffer.from(form.csrf)
    if (presented.length !== expected.length || !timingSafeEqual(presented, expected)) {
      return sendError(reply, 403, 'This form did not come from this sign-in page. Start connecting again from your client.')
    }
    if (form.decision === 'deny') {
      options.metrics.authorization('denied')
      return await finish(request, reply, { error: 'access_denied', error_description: 'The owner denied access.' })
    }
    try {
      const { subject, apiToken } = await signIn(request, reply, form)
      const allowed = apiToken === undefined ? new Set<string>(options.grantableScopes) : scopesOfToken(apiToken, options.grantableScopes)
      const offered = offeredScopes(details, options.grantableScopes)
      const chosen = [form.scope ?? []].flat().filter((scope) => offered.includes(scope))
      if (chosen.length === 0) throw new PageError('Choose at least one thing the client may do.', 400)
      const refused = chosen.filter((scope) => !allowed.has(scope))
      if (refused.length > 0) throw new PageError(`The API token you signed in with does not have ${refused.join(', ')}; untick ${refused.length === 1 ? 'it' : 'them'}, or sign in with the owner password.`, 403)
      const namespace = (form.namespace ?? '').trim() === '' ? (apiToken?.namespace ?? DEFAULT_NAMESPACE) : (form.namespace ?? '').trim()
      if (!NAMESPACE.test(namespace)) throw new PageError('A namespace is 1-255 characters of A-Z a-z 0-9 _ . : / -.', 400)
      if (apiToken !== undefined && !apiToken.globalAdmin && namespace !== apiToken.namespace) {
        throw new PageError(`The API token you signed in with works in namespace "${apiToken.namespace}" only.`, 403)
      }
      const requested = requestedScopes(details)
      if (requested.size === 0) {
        // The client named no scope (OAuth 2.1 lets it; the MCP conformance suite's client does
        // not): it asks for what the owner allows. oidc-provider issues only scopes both requested
        // and granted, so the request it resumes must name the owner's choice.
        details.params.scope = chosen.join(' ')
        await details.save(details.exp - Math.floor(Date.now() / 1000))
      }
      const provider = options.provider()
      const grant = new provider.Grant({ accountId: subject, clientId: String(details.params.client_id) })
      grant.addResourceScope(resource, chosen.join(' '))
      // Scopes asked for but unticked are refused, not missing: else oidc-provider would ask for consent again.
      const unticked = offered.filter((scope) => !chosen.includes(scope))
      if (unticked.length > 0) grant.rejectResourceScope(resource, unticked.join(' '))
      const oidcScopes = ['openid', 'offline_access'].filter((scope) => requested.has(scope))
      if (oidcScopes.length > 0) grant.addOIDCScope(oidcScopes.join(' '))
      const grantId = await grant.save()
      await store.insertGrantBinding({ grantId, namespace, apiTokenId: apiToken?.id ?? null, subject })
      request.log.info({ client: details.params.client_id, subject, namespace, scopes: chosen }, 'oauth grant made')
      options.metrics.authorization('granted')
      return await finish(request, reply, { login: { accountId: subject }, consent: { grantId } })
    } catch (error) {
      if (error instanceof PageError) return await showPage(request, reply, details, form, error)
      if (error instanceof AppError && error.code === 'REQ_1103') {
        const wait = reply.getHeader('retry-after')
        return await showPage(request, reply, details, form, new PageError(`Too many wrong sign-ins from this address. Wait ${wait === undefined ? 'a minute' : `${String(wait)} s`}, then try again.`, 429))
      }
      throw error
    }
  })
}
