/**
 * The baseline for `npm run bench:api`: a bare Fastify + pg handler doing the same query the
 * control plane does for GET /v1/partitions/{id}, with no framework, auth or logging.
 * Usage: node bench/dist/bare-server.js <port> <database-url> <project-id>
 */
import Fastify from 'fastify';
import { Pool } from 'pg';

async function main(): Promise<void> {
  const [port, url, projectId] = process.argv.slice(2);
  const pool = new Pool({ connectionString: url, max: 20 });
  const app = Fastify({ logger: false });
  app.get<{ Params: { id: string } }>('/v1/partitions/:id', async (req, reply) => {
    const { rows } = await pool.query(`SELECT * FROM partitions WHERE id = $1 AND project_id = $2`, [req.params.id, projectId]);
    const r = rows[0];
    if (!r) return reply.status(404).send({ status: 404 });
    return {
      id: r.id, projectId: r.project_id, name: r.name, description: r.description, state: r.state, stateReason: r.state_reason,
      node: r.node_id, vcpus: r.vcpus, memoryMiB: Number(r.memory_mib), diskGiB: r.disk_gib, image: r.image, labels: r.labels,
      etag: `"${r.version}"`, createdAt: r.created_at.toISOString(), updatedAt: r.updated_at.toISOString(),
    };
  });
  await app.listen({ port: Number(port), host: '127.0.0.1' });
  process.stdout.write('ready\n');
}

void main();
