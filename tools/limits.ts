import { AppError } from '../schema/errors.js'

/** Content is limited in UTF-8 bytes, which a JSON Schema maxLength (characters) cannot express. */
export function assertContentFits (content: string, maxContentBytes: number, what = 'content'): void {
  const bytes = Buffer.byteLength(content, 'utf8')
  if (bytes > maxContentBytes) {
    throw new AppError('CTX_2003', `${what} is ${bytes} bytes; the limit is ${maxContentBytes} bytes. Split it across several keys (e.g. "topic/part-1", "topic/part-2") or summarise it. Nothing was written.`, { bytes, max_bytes: maxContentBytes })
  }
}

/** A lone UTF-16 surrogate would be stored as U+FFFD: refuse it rather than store other text than was sent. */
export function assertWellFormed (value: string, field: string, consequence = 'Nothing was written.'): void {
  if (!value.isWellFormed()) {
    throw new AppError('REQ_1101', `Invalid arguments: ${field}: not valid Unicode text (it holds a lone UTF-16 surrogate). ${consequence}`)
  }
}
