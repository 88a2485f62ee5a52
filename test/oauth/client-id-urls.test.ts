import { test } from 'tap'
import { clientIdUrlAllowed } from '../../oauth/client-id-urls.js'

test('Client ID Metadata Document URLs on private, loopback or special addresses are never fetched', async (t) => {
  for (const refused of [
    'https://127.0.0.1/client.json',
    'https://127.0.0.1:1/client.json',
    'https://2130706433/client.json', // 127.0.0.1 written as one number
    'https://0x7f.1/client.json',
    'https://localhost/client.json',
    'https://LOCALHOST./client.json',
    'https://app.localhost/client.json',
    'https://[::1]/client.json',
    'https://[::ffff:127.0.0.1]/client.json',
    'https://[::ffff:10.1.2.3]/client.json',
    'https://[fd00::1]/client.json',
    'https://[fe80::1]/client.json',
    'https://10.0.0.1/client.json',
    'https://172.16.5.4/client.json',
    'https://192.168.0.10/client.json',
    'https://169.254.169.254/client.json',
    'https://100.64.0.1/client.json',
    'https://0.0.0.0/client.json',
    'https://224.0.0.1/client.json',
    'http://app.example/client.json',
    'not a url'
  ]) t.equal(clientIdUrlAllowed(refused), false, refused)

  for (const allowed of ['https://app.example/client.json', 'https://claude.ai/oauth/client.json', 'https://93.184.215.14/client.json', 'https://[2606:4700::1111]/client.json']) {
    t.equal(clientIdUrlAllowed(allowed), true, allowed)
  }
})
