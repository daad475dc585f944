import { ApiPropertyOptional } from '@nestjs/swagger';
import { IsIn, IsOptional } from 'class-validator';

/** POST /v1/nodes/{id}/drain */
export class DrainNodeInput {
  @ApiPropertyOptional({ enum: ['migrate', 'stop'], description: 'migrate (default): running partitions move live, stopped ones cold, to nodes the scheduler chooses; stop: stop them where they are' })
  @IsOptional()
  @IsIn(['migrate', 'stop'])
  mode?: 'migrate' | 'stop';
}
