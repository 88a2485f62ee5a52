import { AppError } from '../schema/errors.js'

// postgres.js connection-level failures, and PostgreSQL SQLSTATEs meaning "the server is not usable right now".
const CONNECTION_ERROR_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND', 'EPIPE', 'EAI_AGAIN',
  'CONNECT_TIMEOUT', 'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED',
  // 57014: canceled by statement_timeout (DB_STATEMENT_TIMEOUT_MS).
  '57014', '57P01', '57P02', '57P03', '53300', '08000', '08001', '08003', '08004', '08006'
])

// Failures that mean the statement never ran or was rolled back: connecting failed, or the server
// cancelled it (statement_timeout). After any other (a connection lost or dropped mid-call) a
// write may have been committed without its answer arriving.
const NOTHING_CHANGED_CODES = new Set([
  'ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'CONNECT_TIMEOUT', 'CONNECTION_ENDED',
  '57014', '57P03', '53300', '08001', '08004'
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
    const code = (error as { code: string }).code
    return NOTHING_CHANGED_CODES.has(code)
      ? new AppError('DEP_3001', 'The database is unavailable right now. Nothing was changed; retry in a few seconds.')
      : new AppError('DEP_3001', 'The connection to the database was lost during the call: a change may or may not have been made. Read the entry before retrying a write.')
  }
  return new AppError('SRV_9001', 'Internal error. If it persists, check the server log.')
}
