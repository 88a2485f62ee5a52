import fp from 'fastify-plugin'
import type { Config } from '../schema/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

/** Makes the validated configuration available as `fastify.config`. */
export default fp<{ config: Config }>(async (fastify, options) => {
  fastify.decorate('config', Object.freeze({ ...options.config }))
}, { name: 'config', fastify: '5.x' })
