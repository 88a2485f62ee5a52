# syntax=docker/dockerfile:1
#
# shared-context-mcp: compiled JavaScript on Node 26 (the Active LTS line), production dependencies only, as a non-root user.
#
#   docker build -t shared-context-mcp .
#   docker run -p 3000:3000 -e AUTH_TOKEN=... -e DATABASE_URL=postgres://... shared-context-mcp
#   docker run -p 3000:3000 -e AUTH_TOKEN=... -v scm-data:/data shared-context-mcp    # embedded database
#   docker run -p 3000:3000 -e OAUTH_SERVER=on -e PUBLIC_URL=https://ctx.example.com ...   # its own OAuth server (Claude.ai);
#     then: docker exec -it <container> node dist/cli.js oauth set-password
#
# No secret is baked in: AUTH_TOKEN, DATABASE_URL, REDIS_URL, ... come from the environment at run
# time. CI cannot run Docker; scripts/check-image-steps.ts replays these steps in a scratch copy and
# scripts/lint-dockerfile.ts lints this file.

# Pinned by full version: scripts/check-image-steps.ts replays the build on exactly this Node (from npm's
# node-<platform>-<arch> package); add @sha256:<digest> for byte-identical rebuilds.
ARG NODE_IMAGE=node:26.12.1-bookworm-slim

# ---- build: all dependencies, tsc, the initialised embedded-database template; then drop dev dependencies
FROM ${NODE_IMAGE} AS build
WORKDIR /app
ENV npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
COPY package.json package-lock.json ./
# npm ci's postinstall applies these to the installed dependencies (patch-package; see patches/).
COPY patches ./patches
RUN npm ci
COPY . .
# `npm run build` = tsc + migrations + dist/db/pglite-template.tar (a new DATA_DIR starts from it).
RUN npm run build && npm prune --omit=dev

# ---- runtime: no compiler, no dev dependencies, no sources
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production HOST=0.0.0.0 PORT=3000 DATA_DIR=/data
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# The embedded database (used when DATABASE_URL is unset) lives on this volume, owned by the app's user.
RUN mkdir -p /data && chown 1000:1000 /data
VOLUME ["/data"]
# The image's `node` user, numeric so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000
EXPOSE 3000
# slim images have no curl: Node's fetch. /health only says the process answers; /ready also checks the database.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 3000) + '/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Exec form: node is PID 1 and gets SIGTERM itself (graceful shutdown, exit 0). Give `docker stop`
# more than SHUTDOWN_TIMEOUT_MS (30 s): `docker stop -t 35` or `docker run --stop-timeout 35`.
STOPSIGNAL SIGTERM
CMD ["node", "dist/server.js"]
