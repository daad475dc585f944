/** Test TLS credentials made with openssl: one CA, and per node the files QEMU's tls-creds-x509 reads. */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * Creates `<root>/ca` and, for every node, `<root>/<node>` with ca-cert.pem and a server and a
 * client certificate signed by the CA; the server certificate names the node (its TLS hostname).
 * Returns the node directories by name.
 */
export function makeTlsDirs(root: string, nodes: string[]): Record<string, string> {
  const ca = join(root, 'ca');
  mkdirSync(ca, { recursive: true });
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=hyperplane-test-ca',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], ca);
  const out: Record<string, string> = {};
  for (const node of nodes) {
    const d = join(root, node);
    mkdirSync(d, { recursive: true });
    copyFileSync(join(ca, 'ca-cert.pem'), join(d, 'ca-cert.pem'));
    for (const [role, usage] of [['server', 'serverAuth'], ['client', 'clientAuth']] as const) {
      writeFileSync(join(d, `${role}.ext`), `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=${usage}\nsubjectAltName=DNS:${node}\n`);
      openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${role}-key.pem`, '-out', `${role}.csr`, '-subj', `/CN=${node}`], d);
      openssl(['x509', '-req', '-in', `${role}.csr`, '-CA', join(ca, 'ca-cert.pem'), '-CAkey', join(ca, 'ca-key.pem'), '-CAcreateserial', '-out', `${role}-cert.pem`, '-days', '2', '-extfile', `${role}.ext`], d);
    }
    out[node] = d;
  }
  return out;
}
