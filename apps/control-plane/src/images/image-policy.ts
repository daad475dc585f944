import { Injectable } from '@nestjs/common';
import { DomainError, FailedPreconditionError, ResourceExhaustedError } from '@hyperplane/domain';
import type { ImageMetadata } from '@hyperplane/disk-formats';
import type { ImageRequirements } from '@hyperplane/scheduler';
import { Db, lockForTransaction } from '../database/database';
import { ProjectRepository } from '../projects/project.repository';
import { ImageRepository } from './image.repository';

/** What a partition create or placement asks of an image. */
export interface ImageUse {
  projectId: string;
  projectName: string;
  image: string;
  /** Partitions this request adds (0 when placing an existing one again). */
  adding: number;
  /** Partitions of the project already using the image. */
  inUse: number;
  now: Date;
}

/**
 * The first rule of an image's own metadata that refuses `use`, as a domain error naming the rule,
 * or null. Pure: the caller supplies the counts.
 */
export function imagePolicyRefusal(m: Partial<ImageMetadata>, use: ImageUse): DomainError | null {
  if (typeof m.expiresAt === 'string' && Date.parse(m.expiresAt) <= use.now.getTime()) {
    return new FailedPreconditionError(`image ${use.image} expired at ${m.expiresAt} (rule expiresAt)`);
  }
  const allowed = m.usagePolicy?.allowedProjects ?? [];
  if (allowed.length && !allowed.includes(use.projectId) && !allowed.includes(use.projectName)) {
    return new FailedPreconditionError(`image ${use.image} may not be used by project ${use.projectName} (rule usagePolicy.allowedProjects: ${allowed.join(', ')})`);
  }
  const max = m.usagePolicy?.maxConcurrentPartitions ?? 0;
  if (max > 0 && use.inUse + use.adding > max) {
    const message = `image ${use.image} allows at most ${max} concurrent partitions; ${use.inUse} exist and this request adds ${use.adding} (rule usagePolicy.maxConcurrentPartitions)`;
    return new ResourceExhaustedError(message, [{ reason: 'image-max-concurrent-partitions', count: use.adding, message }]);
  }
  return null;
}

/** The hardware section of an image's metadata as the scheduler's imageHardware filter reads it. */
export function imageRequirementsOf(m: Partial<ImageMetadata>): ImageRequirements | undefined {
  const hw = m.hardware;
  if (!hw) return undefined;
  return { arch: hw.arch, minVcpus: hw.minVcpus, minMemoryMiB: hw.minMemoryMiB, cpuFeatures: hw.cpuFeatures, machineTypes: hw.machineTypes, firmware: hw.firmware };
}

/** What a library image means for a placement: requirements for the scheduler. */
export interface ImageTerms {
  /** True when the name is in the project's library (else a node-reported image such as `sample`). */
  inLibrary: boolean;
  /** The library image's id (partitions record it: their disk is based on that image, fetched to the node). */
  imageId?: string;
  requirements?: ImageRequirements;
}

/**
 * The policy partitions obey when they use an image of the project's library (issue: "Policy"):
 * expiry, allowed projects, concurrent partitions, hardware. An image name that is not in the
 * library (one a node reports in its store, like `sample`) carries no policy.
 */
@Injectable()
export class ImagePolicy {
  constructor(
    private readonly images: ImageRepository,
    private readonly projects: ProjectRepository,
  ) {}

  /**
   * Checks `adding` new partitions (or one placement again, with adding = 0) against the image's
   * rules in the caller's transaction, serialised per image so two creates cannot both take the
   * last slot. Throws the refusal naming the rule.
   */
  async admit(db: Db, projectId: string, image: string, adding: number): Promise<ImageTerms> {
    const row = await this.images.getByName(db, projectId, image);
    if (!row) return { inLibrary: false };
    const m = row.metadata as Partial<ImageMetadata>;
    const max = m.usagePolicy?.maxConcurrentPartitions ?? 0;
    if (max > 0 && adding > 0) await lockForTransaction(db, `image:${row.id}`);
    const project = await this.projects.findByIdOrName(projectId, db);
    const inUse = max > 0 && adding > 0 ? await this.images.partitionsUsing(db, projectId, image) : 0;
    const refusal = imagePolicyRefusal(m, { projectId, projectName: project?.name ?? projectId, image, adding, inUse, now: new Date() });
    if (refusal) throw refusal;
    return { inLibrary: true, imageId: row.id, requirements: imageRequirementsOf(m) };
  }

  /**
   * The hardware an existing partition's image asks of a node it moves to. No refusal: expiry and
   * usage rules govern new partitions and starts, not a running one changing nodes (a drain must
   * be able to move it).
   */
  async requirements(db: Db, projectId: string, image: string): Promise<ImageTerms> {
    const row = await this.images.getByName(db, projectId, image);
    if (!row) return { inLibrary: false };
    return { inLibrary: true, requirements: imageRequirementsOf(row.metadata as Partial<ImageMetadata>) };
  }
}
