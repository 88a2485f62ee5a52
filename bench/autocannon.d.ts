// The part of autocannon 9's API this benchmark uses (the package ships no types).
declare module 'autocannon' {
  import type { EventEmitter } from 'node:events'

  export type Context = Record<string, unknown>

  export interface RequestParams {
    method?: string
    path?: string
    headers?: Record<string, string>
    body?: string | Buffer
  }

  export interface Request extends RequestParams {
    /** Called before each request is sent; the returned params are sent. */
    setupRequest?: (request: RequestParams, context: Context) => RequestParams
    /** Called with every complete response of this request (body is the whole, de-chunked body). */
    onResponse?: (status: number, body: string, context: Context, headers: Record<string, string | string[]>) => void
  }

  export interface Options {
    url: string
    connections?: number
    duration?: number
    /** Seconds without a response before a request counts as a timeout. */
    timeout?: number
    /** Requests per second across all connections (none: as fast as answers come). */
    overallRate?: number
    method?: string
    headers?: Record<string, string>
    requests?: Request[]
    initialContext?: Context
  }

  export interface Histogram {
    average: number
    mean: number
    stddev: number
    min: number
    max: number
    total: number
    p50: number
    p90: number
    p99: number
    p99_9: number
  }

  export interface Result {
    duration: number
    errors: number
    timeouts: number
    non2xx: number
    resets: number
    '1xx': number
    '2xx': number
    '3xx': number
    '4xx': number
    '5xx': number
    latency: Histogram
    requests: Histogram & { sent: number }
    throughput: Histogram
  }

  export interface Instance extends EventEmitter, PromiseLike<Result> {
    stop (): void
  }

  export default function autocannon (options: Options): Instance
}
