import { Type, type Static } from '@sinclair/typebox'

/** The error catalogue (design.md §6). Every failure the server reports carries one of these codes. */
export const errorCatalogue = {
  AUTH_1001: { status: 401, title: 'missing bearer token' },
  AUTH_1002: { status: 401, title: 'invalid or expired token' },
  AUTH_1003: { status: 401, title: 'token revoked' },
  AUTH_1004: { status: 403, title: 'insufficient scope' },
  AUTH_1005: { status: 403, title: 'Origin or Host not allowed' },
  REQ_1101: { status: 400, title: 'input failed validation' },
  REQ_1102: { status: 413, title: 'body too large' },
  REQ_1103: { status: 429, title: 'rate limited' },
  CTX_2001: { status: 404, title: 'key not found' },
  CTX_2002: { status: 409, title: 'version conflict' },
  CTX_2003: { status: 413, title: 'content too large' },
  DEP_3001: { status: 503, title: 'database unavailable' },
  DEP_3002: { status: 503, title: 'identity provider unavailable' },
  MCP_2001: { status: 504, title: 'upstream MCP server timed out' },
  MCP_2002: { status: 502, title: 'upstream MCP server failed or unreachable' },
  MCP_2003: { status: 202, title: 'approval pending' },
  MCP_2004: { status: 403, title: 'approval refused (rejected, expired or cancelled)' },
  MCP_2005: { status: 409, title: 'the upstream call waiting for this answer is not held here (another instance, or it ended)' },
  SRV_9001: { status: 500, title: 'internal error' },
  SRV_9002: { status: 503, title: 'shutting down' }
} as const

export type ErrorCode = keyof typeof errorCatalogue

export const ErrorBodySchema = Type.Object({
  error: Type.Object({
    code: Type.String(),
    message: Type.String()
  }, { additionalProperties: true })
})
export type ErrorBody = Static<typeof ErrorBodySchema>

/**
 * A failure with a catalogue code. `message` is shown to the caller, so it must say what was wrong
 * and what to do, and must never carry secrets or internals. `details` are extra fields for the
 * structured error (e.g. the current version on a conflict).
 */
export class AppError extends Error {
  readonly code: ErrorCode
  readonly statusCode: number
  readonly details: Record<string, unknown> | undefined

  /** `statusCode` overrides the catalogue's HTTP status where HTTP says more (e.g. 415 for a wrong Content-Type). */
  constructor (code: ErrorCode, message: string, details?: Record<string, unknown>, statusCode?: number) {
    super(message)
    this.name = 'AppError'
    this.code = code
    this.statusCode = statusCode ?? errorCatalogue[code].status
    this.details = details
  }

  toBody (): ErrorBody {
    return { error: { code: this.code, message: this.message, ...this.details } }
  }
}
