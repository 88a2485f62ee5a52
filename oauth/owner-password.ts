import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto'

// One of OWASP's equivalent scrypt settings (N=2^15, r=8, p=3): 32 MiB a check, so that a few
// sign-ins at once fit in a small machine's memory.
const PARAMETERS = { N: 2 ** 15, r: 8, p: 3 } as const
const KEY_LENGTH = 32
const MIN_LENGTH = 12
const MAX_LENGTH = 1024

function derive (password: string, salt: Buffer, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), salt, KEY_LENGTH, { ...options, maxmem: 64 * 1024 * 1024 }, (error, key) => { if (error === null) resolve(key); else reject(error) })
  })
}

/** Why a new owner password is refused, or undefined. */
export function ownerPasswordProblem (password: string): string | undefined {
  if (password.length < MIN_LENGTH) return `The password must have at least ${MIN_LENGTH} characters.`
  if (password.length > MAX_LENGTH) return `The password must have at most ${MAX_LENGTH} characters.`
  return undefined
}

/** `scrypt$N$r$p$salt$key`, salt and key in base64url. */
export async function hashOwnerPassword (password: string): Promise<string> {
  const salt = randomBytes(16)
  const key = await derive(password, salt, PARAMETERS)
  return ['scrypt', PARAMETERS.N, PARAMETERS.r, PARAMETERS.p, salt.toString('base64url'), key.toString('base64url')].join('$')
}

export async function verifyOwnerPassword (password: string, stored: string): Promise<boolean> {
  const [scheme, n, r, p, salt, key] = stored.split('$')
  if (scheme !== 'scrypt' || salt === undefined || key === undefined || password.length > MAX_LENGTH) return false
  const expected = Buffer.from(key, 'base64url')
  const actual = await derive(password, Buffer.from(salt, 'base64url'), { N: Number(n), r: Number(r), p: Number(p) })
  return actual.length === expected.length && timingSafeEqual(actual, expected)
}
