import { test } from 'tap'
test('ts works', async (t) => { const x: number = 1; t.equal(x, 1) })
