/** Every schema migration, oldest first. The schema exists only through these (never `synchronize`). */
import { InitialSchema1732400000000 } from './1732400000000-initial-schema';
import { Placement1732500000000 } from './1732500000000-placement';
import { Images1732600000000 } from './1732600000000-images';
import { ImageDistribution1732700000000 } from './1732700000000-image-distribution';
import { ServiceChains1732800000000 } from './1732800000000-service-chains';
import { SnapshotsMigration1733000000000 } from './1733000000000-snapshots-migration';
import { ImagesMetadataStatistics1733100000000 } from './1733100000000-images-metadata-statistics';
import { OperationLeases1733200000000 } from './1733200000000-operation-leases';

export const MIGRATIONS = [InitialSchema1732400000000, Placement1732500000000, Images1732600000000, ImageDistribution1732700000000, ServiceChains1732800000000, SnapshotsMigration1733000000000, ImagesMetadataStatistics1733100000000, OperationLeases1733200000000];
