import { Value } from '@sinclair/typebox/value'
import { Key, NamespaceArg } from '../schema/key.js'

const SCHEME = 'context://'

/** An entry's resource URI, context://{namespace}/{key}; the namespace is percent-encoded (it may hold "/"). */
export function contextUri (namespace: string, key: string): string {
  return `${SCHEME}${encodeURIComponent(namespace)}/${key}`
}

/** The namespace and key of a context:// URI, or undefined when it is not a valid one. */
export function parseContextUri (uri: string): { namespace: string, key: string } | undefined {
  if (!uri.startsWith(SCHEME)) return undefined
  const rest = uri.slice(SCHEME.length)
  const slash = rest.indexOf('/')
  if (slash <= 0) return undefined
  let namespace: string
  try {
    namespace = decodeURIComponent(rest.slice(0, slash))
  } catch {
    return undefined
  }
  const key = rest.slice(slash + 1)
  return Value.Check(NamespaceArg, namespace) && Value.Check(Key, key) ? { namespace, key } : undefined
}
