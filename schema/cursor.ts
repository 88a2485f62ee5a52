import { Type } from '@sinclair/typebox'
import { AppError } from './errors.js'

export const Cursor = Type.String({
  minLength: 1,
  maxLength: 1024,
  description: 'Opaque cursor from a previous page\'s next_cursor; omit for the first page.'
})

/** Cursors are opaque to clients: a kind tag and a position, base64url-encoded. */
export function encodeCursor (kind: string, position: string | number): string {
  return Buffer.from(`${kind}:${position}`, 'utf8').toString('base64url')
}

/** The position a cursor holds; a cursor of another kind, or whose position fails `isValid`, is REQ_1101. */
export function decodeCursor (kind: string, cursor: string, isValid: (position: string) => boolean): string {
  const decoded = Buffer.from(cursor, 'base64url').toString('utf8')
  const prefix = `${kind}:`
  const position = decoded.slice(prefix.length)
  if (!decoded.startsWith(prefix) || !isValid(position)) {
    throw new AppError('REQ_1101', 'cursor is not valid here: pass the next_cursor value of the previous page unchanged, or omit it for the first page.')
  }
  return position
}
