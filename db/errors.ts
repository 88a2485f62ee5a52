import { AppError } from '../schema/errors.js'

// postgres.js connection-level failures, and PostgreSQL SQLSTATEs meaning "the server is not usable right now".
const CONNECTION_ERROR_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND', 'EPIPE', 'EAI_AGAIN',
  'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED',
  // 57014: canceled by statement_timeout (DB_STATEMENT_TIMEOUT_MS).
  '57014', '57P01', '57P02', '57P03', '53300', '08000', '08001', '08003', '08004', '08006'
])

export function isDatabaseUnavailable (error: unknown): boolean {
  if (typeof error !== 'object' || error === null) return false
  const code = (error as { code?: unknown }).code
  return typeof code === 'string' && CONNECTION_ERROR_CODES.has(code)
}

/** Maps any failure to the catalogue: AppErrors pass through, a lost database is DEP_3001, the rest SRV_9001. */
export function toAppError (error: unknown): AppError {
  if (error instanceof AppError) return error
  if (isDatabaseUnavailable(error)) {
    return new AppError('DEP_3001', 'The database is unavailable right now. Nothing was changed; retry in a few seconds.')
  }
  return new AppError('SRV_9001', 'Internal error. If it persists, check the server log.')
}
