// A real OAuth 2 / OpenID authorization server for igris-mw's tests: oidc-provider
// (a certified OpenID Provider), configured the way remote MCP servers' providers are.
//
//   node server.mjs PORT            (or PORT=... node server.mjs)
//
// Listens on 127.0.0.1:PORT with issuer http://127.0.0.1:PORT. On:
// - client_credentials; authorization_code with PKCE (S256 only, required for
//   every client); refresh tokens, rotated on every use (a reused refresh token
//   revokes the whole grant, which is what stranding a grant looks like);
// - resource indicators (RFC 8707): any loopback http(s) URL is a resource server
//   whose access tokens are ES256-signed JWTs with `aud` = the resource;
// - revocation (RFC 7009), `iss` in the authorization response (RFC 9207);
// - devInteractions: the provider's own login and consent forms (any account
//   id, any password), which the tests drive by HTTP.
//
// Test-only control routes (loopback, never part of any product):
//   GET  /_test/stats             token endpoint requests counted by client and grant
//   POST /_test/reset             counters to zero
//   POST /_test/ttl?seconds=N     lifetime of access tokens issued from now on
//   POST /_test/fail?count=N      the next N token requests answer 503 (an outage)
//
// Keys are made fresh at every start; nothing is stored on disk.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || process.env.PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node server.mjs PORT');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

const state = {
  accessTokenTTL: Number(process.env.ACCESS_TOKEN_TTL || 3600),
  failNext: 0,
  counts: {},
};

function privateJwk(type, options, extra) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), ...extra };
}

const jwks = {
  keys: [
    // ES256 signs the JWT access tokens; RS256 is what ID tokens default to.
    privateJwk('ec', { namedCurve: 'P-256' }, { kid: 'es256-test', use: 'sig', alg: 'ES256' }),
    privateJwk('rsa', { modulusLength: 2048 }, { kid: 'rs256-test', use: 'sig', alg: 'RS256' }),
  ],
};

// Loopback redirect URIs: a native client may use any port on them (RFC 8252,
// 7.3), so the gateway under test can listen on a free port.
const redirectUris = [
  'http://127.0.0.1/api/v1/oauth/callback',
  'http://localhost/api/v1/oauth/callback',
];

const RESOURCE_SCOPES = 'mcp:tools mcp:admin';

function isTestResource(resource) {
  try {
    const url = new URL(resource);
    return ['http:', 'https:'].includes(url.protocol)
      && ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)
      && url.hash === '';
  } catch {
    return false;
  }
}

const configuration = {
  clients: [
    {
      // A pre-registered confidential client: both client-authentication styles.
      client_id: 'igris-confidential',
      client_secret: 'test-client-secret-0123456789abcdef',
      application_type: 'native',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: redirectUris,
    },
    {
      client_id: 'igris-confidential-post',
      client_secret: 'test-client-secret-post-0123456789abcdef',
      application_type: 'native',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: redirectUris,
    },
    {
      // A public client: no secret; PKCE is its only proof.
      client_id: 'igris-public',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: redirectUris,
    },
  ],
  jwks,
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', ...RESOURCE_SCOPES.split(' ')],
  claims: { openid: ['sub'] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator) => {
        if (!isTestResource(resourceIndicator)) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: RESOURCE_SCOPES,
          accessTokenTTL: state.accessTokenTTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  // Every authorization-code grant of a client allowed to refresh gets a refresh
  // token (no offline_access dance), rotated on every use.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  ttl: {
    AccessToken: () => state.accessTokenTTL,
    ClientCredentials: () => state.accessTokenTTL,
    AuthorizationCode: 60,
    RefreshToken: 24 * 60 * 60,
    Grant: 24 * 60 * 60,
    Interaction: 10 * 60,
    Session: 24 * 60 * 60,
    IdToken: 60 * 60,
  },
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
};

const provider = new Provider(issuer, configuration);

function json(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.body = JSON.stringify(body);
}

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/_test/')) {
    if (ctx.method === 'GET' && ctx.path === '/_test/stats') {
      json(ctx, 200, { counts: state.counts, accessTokenTTL: state.accessTokenTTL });
      return;
    }
    if (ctx.method === 'POST' && ctx.path === '/_test/reset') {
      state.counts = {};
      state.failNext = 0;
      json(ctx, 200, {});
      return;
    }
    if (ctx.method === 'POST' && ctx.path === '/_test/ttl') {
      const seconds = Number(ctx.query.seconds);
      if (!Number.isInteger(seconds) || seconds <= 0) {
        json(ctx, 400, { error: 'seconds must be a positive integer' });
        return;
      }
      state.accessTokenTTL = seconds;
      json(ctx, 200, { accessTokenTTL: seconds });
      return;
    }
    if (ctx.method === 'POST' && ctx.path === '/_test/fail') {
      state.failNext = Number(ctx.query.count || 1);
      json(ctx, 200, { failNext: state.failNext });
      return;
    }
    json(ctx, 404, { error: 'no such test route' });
    return;
  }
  if (ctx.method === 'POST' && ctx.path === '/token') {
    if (state.failNext > 0) {
      state.failNext -= 1;
      json(ctx, 503, { error: 'temporarily_unavailable' });
      return;
    }
  }
  await next();
});

// Count after the provider has authenticated the client, by the client it
// authenticated and the grant it served (failed requests count too: a test of
// "exactly one token request" must see the ones that failed).
provider.on('grant.success', (ctx) => count(ctx, 'success'));
provider.on('grant.error', (ctx) => count(ctx, 'error'));

function count(ctx, outcome) {
  const client = ctx.oidc?.client?.clientId || ctx.oidc?.params?.client_id || 'unknown';
  const grant = ctx.oidc?.params?.grant_type || 'unknown';
  const key = `${client} ${grant} ${outcome}`;
  state.counts[key] = (state.counts[key] || 0) + 1;
}

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
