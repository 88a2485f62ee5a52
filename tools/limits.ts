import { AppError } from '../schema/errors.js'

/** Content is limited in UTF-8 bytes, which a JSON Schema maxLength (characters) cannot express. */
export function assertContentFits (content: string, maxContentBytes: number, what = 'content'): void {
  const bytes = Buffer.byteLength(content, 'utf8')
  if (bytes > maxContentBytes) {
    throw new AppError('CTX_2003', `${what} is ${bytes} bytes; the limit is ${maxContentBytes} bytes. Split it across several keys (e.g. "topic/part-1", "topic/part-2") or summarise it. Nothing was written.`, { bytes, max_bytes: maxContentBytes })
  }
}
