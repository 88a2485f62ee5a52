import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import formbody from '@fastify/formbody'
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { default as ProviderClass } from 'oidc-provider'
import type { ApiTokenRecord } from '../db/context-store.js'
import type { OAuthStore } from '../db/oauth-store.js'
import { NAMESPACE_PATTERN } from '../schema/key.js'
import { AppError } from '../schema/errors.js'
import { originOf } from '../plugins/host-check.js'
import { verifyOwnerPassword } from './owner-password.js'
import { pageHeaders, renderConsentPage, renderErrorPage } from './pages.js'
import { GRANTABLE_SCOPES, INTERACTION_PATH } from './provider.js'

const ConsentFormSchema = Type.Object({
  csrf: Type.String({ maxLength: 128 }),
  decision: Type.Union([Type.Literal('allow'), Type.Literal('deny')]),
  scope: Type.Optional(Type.Union([Type.String({ maxLength: 64 }), Type.Array(Type.String({ maxLength: 64 }), { maxItems: 10 })])),
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
  /** A secret every instance shares (the cookie key): consent forms carry an HMAC of their interaction made with it. */
  formSecret: () => string
  /** The active API token with this value, or null. */
  findApiToken: (token: string) => Promise<ApiTokenRecord | null>
}

type Details = Awaited<ReturnType<ProviderClass['interactionDetails']>>

class PageError extends Error {
  constructor (message: string, readonly statusCode: number) {
    super(message)
  }
}

function requestedScopes (details: Details): Set<string> {
  const scope = typeof details.params.scope === 'string' ? details.params.scope : ''
  return new Set(scope.split(' ').filter((value) => value.length > 0))
}

/** The scopes an API token may hand on: its own, or every grantable one when it is admin. */
function scopesOfToken (token: ApiTokenRecord): Set<string> {
  return token.scopes.includes('context:admin') || token.globalAdmin ? new Set(GRANTABLE_SCOPES) : new Set(token.scopes)
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

  async function showPage (request: FastifyRequest<{ Params: Params }>, reply: FastifyReply, details: Details, form: Partial<ConsentForm>, error: { message: string, statusCode: number } | undefined): Promise<FastifyReply> {
    const clientId = String(details.params.client_id)
    const client = await options.provider().Client.find(clientId)
    const redirectUri = String(details.params.redirect_uri)
    const requested = requestedScopes(details)
    const chosen = form.scope === undefined ? undefined : new Set([form.scope].flat())
    const nonce = randomBytes(16).toString('base64')
    const html = renderConsentPage({
      action: `${INTERACTION_PATH}/${details.uid}`,
      csrfToken: csrfTokenFor(details.uid),
      nonce,
      clientName: client?.clientName ?? clientId,
      clientUrl: clientId.startsWith('https://') ? clientId : undefined,
      redirectHost: URL.parse(redirectUri)?.host ?? redirectUri,
      scopes: GRANTABLE_SCOPES.map((scope) => ({ scope, checked: chosen === undefined ? requested.size === 0 || requested.has(scope) : chosen.has(scope) })),
      namespace: form.namespace ?? DEFAULT_NAMESPACE,
      ownerPasswordSet: await store.ownerPasswordHash() !== null,
      signInWith: form.token !== undefined && form.token !== '' ? 'token' : 'password',
      error: error?.message
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
      await addressBudget.countFailure(request, new AppError('AUTH_1002', 'wrong credentials'))
      throw new PageError(password !== '' ? 'That is not the owner password.' : 'That API token is not valid (wrong, revoked, or from another server).', 401)
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
      return await finish(request, reply, { error: 'access_denied', error_description: 'The owner denied access.' })
    }
    try {
      const { subject, apiToken } = await signIn(request, reply, form)
      const allowed = apiToken === undefined ? new Set<string>(GRANTABLE_SCOPES) : scopesOfToken(apiToken)
      const chosen = [form.scope ?? []].flat().filter((scope) => (GRANTABLE_SCOPES as readonly string[]).includes(scope))
      if (chosen.length === 0) throw new PageError('Choose at least one thing the client may do.', 400)
      const refused = chosen.filter((scope) => !allowed.has(scope))
      if (refused.length > 0) throw new PageError(`The API token you signed in with does not have ${refused.join(', ')}; untick ${refused.length === 1 ? 'it' : 'them'}, or sign in with the owner password.`, 403)
      const namespace = (form.namespace ?? '').trim() === '' ? (apiToken?.namespace ?? DEFAULT_NAMESPACE) : (form.namespace ?? '').trim()
      if (!NAMESPACE.test(namespace)) throw new PageError('A namespace is 1-255 characters of A-Z a-z 0-9 _ . : / -.', 400)
      if (apiToken !== undefined && !apiToken.globalAdmin && namespace !== apiToken.namespace) {
        throw new PageError(`The API token you signed in with works in namespace "${apiToken.namespace}" only.`, 403)
      }
      const provider = options.provider()
      const grant = new provider.Grant({ accountId: subject, clientId: String(details.params.client_id) })
      grant.addResourceScope(resource, chosen.join(' '))
      const requested = requestedScopes(details)
      // Scopes the client asked for and the owner left unticked are refused, not pending:
      // otherwise oidc-provider sees them missing and sends the owner back to this page.
      const unticked = GRANTABLE_SCOPES.filter((scope) => requested.has(scope) && !chosen.includes(scope))
      if (unticked.length > 0) grant.rejectResourceScope(resource, unticked.join(' '))
      const oidcScopes = ['openid', 'offline_access'].filter((scope) => requested.has(scope))
      if (oidcScopes.length > 0) grant.addOIDCScope(oidcScopes.join(' '))
      const grantId = await grant.save()
      await store.insertGrantBinding({ grantId, namespace, apiTokenId: apiToken?.id ?? null, subject })
      request.log.info({ client: details.params.client_id, subject, namespace, scopes: chosen }, 'oauth grant made')
      return await finish(request, reply, { login: { accountId: subject }, consent: { grantId } })
    } catch (error) {
      if (error instanceof PageError) return await showPage(request, reply, details, form, { message: error.message, statusCode: error.statusCode })
      if (error instanceof AppError && error.code === 'REQ_1103') return await showPage(request, reply, details, form, { message: error.message, statusCode: 429 })
      throw error
    }
  })
}
