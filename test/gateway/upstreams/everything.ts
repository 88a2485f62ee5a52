import { spawn } from 'node:child_process'
import { createRequire } from 'node:module'
import { freePort } from '../../../scripts/free-port.js'

/** The MCP reference server (@modelcontextprotocol/server-everything) in streamableHttp mode, as a child process on loopback. */
export interface Everything {
  url: string
  close: () => Promise<void>
}

export async function startEverything (): Promise<Everything> {
  const entry = createRequire(import.meta.url).resolve('@modelcontextprotocol/server-everything/dist/index.js')
  const port = await freePort()
  const child = spawn(process.execPath, [entry, 'streamableHttp'], { env: { PATH: process.env.PATH ?? '', PORT: String(port) }, stdio: ['ignore', 'ignore', 'pipe'] })
  let output = ''
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server-everything did not start: ${output}`)), 30_000)
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes('listening on port')) {
        clearTimeout(timer)
        resolve()
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`server-everything exited (${code}): ${output}`))
    })
  })
  child.stderr.resume()
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    close: async () => {
      if (child.exitCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill()
      await exited
    }
  }
}
