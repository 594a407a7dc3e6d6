// A real oauth2-mock-server (npm) on a free loopback port, for tests/test_idp_interop.py.
//
//   node idp_oauth2_mock.mjs
//
// The server generates its own keys (RS256, ES256, EdDSA on Ed25519 and on Ed448), serves
// them at /jwks and signs one token with each (audience "api", subject "alice").
// Prints one JSON line {"issuer", "jwks_uri", "tokens": {kid: jwt}} once it listens;
// its /token endpoint signs more. Stops on SIGTERM.
import { OAuth2Server } from 'oauth2-mock-server';

const server = new OAuth2Server();
const made = [
  ['RS256', { kid: 'mock-rs256' }],
  ['ES256', { kid: 'mock-es256' }],
  ['EdDSA', { kid: 'mock-ed25519' }],
  ['EdDSA', { kid: 'mock-ed448', crv: 'Ed448' }],
];
for (const [alg, options] of made) {
  await server.issuer.keys.generate(alg, options);
}
await server.start(0, '127.0.0.1');
// Name the issuer by the loopback address it listens on (the default says "localhost").
server.issuer.url = `http://127.0.0.1:${server.address().port}`;
const tokens = {};
for (const [, { kid }] of made) {
  tokens[kid] = await server.issuer.buildToken({
    kid,
    scopesOrTransform: (header, payload) => {
      payload.aud = 'api';
      payload.sub = 'alice';
    },
  });
}
const issuer = server.issuer.url;
process.stdout.write(`${JSON.stringify({ issuer, jwks_uri: `${issuer}/jwks`, tokens })}\n`);
process.on('SIGTERM', () => server.stop().then(() => process.exit(0)));
