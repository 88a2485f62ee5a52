/** The first row of a statement that always returns one (insert … returning, count(*)). */
export function firstRow<T> (rows: readonly T[]): T {
  const row = rows[0]
  if (row === undefined) throw new Error('expected the statement to return a row')
  return row
}
