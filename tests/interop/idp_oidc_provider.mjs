// A real oidc-provider (npm) on a free loopback port, for tests/test_idp_interop.py.
//
//   node idp_oidc_provider.mjs [--usable] [--ed448] [--rsa1024] [--enc]
//
// --usable adds the keys a provider normally signs with, generated here: RS256 (2048),
// ES256 and an Ed25519 key. --ed448, --rsa1024 and --enc add keys keysetd cannot use:
// an Ed448 signing key, a 1024-bit RSA signing key and an RSA-OAEP encryption key.
// oidc-provider publishes them all at /jwks. Prints one JSON line
// {"jwks_uri": ..., "kids": {...}} once it listens; stops on SIGTERM.
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const flags = new Set(process.argv.slice(2));

function privateJwk(type, options, members) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), ...members };
}

const keys = [];
if (flags.has('--usable')) {
  keys.push(privateJwk('rsa', { modulusLength: 2048 }, { kid: 'op-rs256', alg: 'RS256', use: 'sig' }));
  keys.push(privateJwk('ec', { namedCurve: 'P-256' }, { kid: 'op-es256', use: 'sig' }));
  keys.push(privateJwk('ed25519', {}, { kid: 'op-ed25519', use: 'sig' }));
}
if (flags.has('--ed448')) {
  keys.push(privateJwk('ed448', {}, { kid: 'op-ed448', use: 'sig' }));
}
if (flags.has('--rsa1024')) {
  keys.push(privateJwk('rsa', { modulusLength: 1024 }, { kid: 'op-rsa1024', alg: 'RS256', use: 'sig' }));
}
if (flags.has('--enc')) {
  keys.push(privateJwk('rsa', { modulusLength: 2048 }, { kid: 'op-enc', alg: 'RSA-OAEP', use: 'enc' }));
}

const provider = new Provider('http://127.0.0.1', {
  jwks: { keys },
  features: { encryption: { enabled: true } },
});
const server = createServer(provider.callback());
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const jwksUri = `http://127.0.0.1:${port}/jwks`;
  process.stdout.write(`${JSON.stringify({ jwks_uri: jwksUri, kids: keys.map((k) => k.kid) })}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
