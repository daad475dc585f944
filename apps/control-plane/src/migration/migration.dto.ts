import { ApiPropertyOptional } from '@nestjs/swagger';
import { IsBoolean, IsIn, IsInt, IsOptional, IsString, Max, MaxLength, Min, MinLength } from 'class-validator';

/** POST /v1/partitions/{id}/migrate */
export class MigratePartitionInput {
  @ApiPropertyOptional({ description: 'Node id or name; absent: the scheduler chooses (never the current node)' })
  @IsOptional()
  @IsString()
  @MinLength(1)
  @MaxLength(63)
  targetNode?: string;

  @ApiPropertyOptional({ description: 'Live migration (default for a running partition); a stopped partition migrates cold' })
  @IsOptional()
  @IsBoolean()
  live?: boolean;

  @ApiPropertyOptional({ enum: ['copy', 'shared'], description: 'copy (default): the disk is copied over NBD while the guest runs; shared: both nodes see the same disk file' })
  @IsOptional()
  @IsIn(['copy', 'shared'])
  storage?: 'copy' | 'shared';

  @ApiPropertyOptional({ description: 'Longest pause of the guest at the switch-over, ms (default 300)' })
  @IsOptional()
  @IsInt()
  @Min(1)
  @Max(60_000)
  maxDowntimeMs?: number;

  @ApiPropertyOptional({ description: 'Bandwidth limit of the memory stream and the disk copy, bytes/s (default unlimited)' })
  @IsOptional()
  @IsInt()
  @Min(1024 * 1024)
  @Max(1024 ** 4)
  bandwidthBytesPerSec?: number;

  @ApiPropertyOptional({ description: 'Throttle the guest\'s vCPUs when memory does not converge' })
  @IsOptional()
  @IsBoolean()
  autoConverge?: boolean;

  @ApiPropertyOptional({ description: 'Switch to post-copy when pre-copy does not converge. Risk: in post-copy, losing either node loses the guest' })
  @IsOptional()
  @IsBoolean()
  postcopy?: boolean;

  @ApiPropertyOptional({ description: 'With postcopy: ms of pre-copy before switching (default 10000)' })
  @IsOptional()
  @IsInt()
  @Min(100)
  @Max(3_600_000)
  postcopyAfterMs?: number;

  @ApiPropertyOptional({ description: 'copy storage does not carry internal snapshots: drop them (else a partition with snapshots is refused)' })
  @IsOptional()
  @IsBoolean()
  discardSnapshots?: boolean;
}
