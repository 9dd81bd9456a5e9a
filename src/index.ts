export { Durably, type DurablyConfig, type RegisterOptions } from './durably.js';
export { Context, type Future, type ExternalPromise, type StepFunction } from './context.js';
export { DurableHandle, type PromiseRecord, type PromiseState } from './promises.js';
export { options, parseTarget, type CallOptions, type Options } from './options.js';
export type { RetryPolicy } from './retry.js';
export type { Logger, LogOption } from './log.js';
export { renderMetrics } from './metrics.js';
export { migrate } from './migrate.js';
export {
  DurablyError, InvalidArgumentError, NotFoundError, AlreadyExistsError, NonDeterminismError,
  PromiseRejectedError, type ErrorValue,
} from './errors.js';
export { Limits, type LimitSettings, type LimitRecord } from './limits.js';
export { ScheduleHandle, type ScheduleRecord, type Recurrence, type OverlapPolicy, type CatchupPolicy } from './schedules.js';
export {
  invokeInKysely, type DurablyDatabase, type InvokeResult, type PromiseListRow, type TaskListRow, type ScheduleListRow,
  type WorkerStatusRow, type LimitListRow,
} from './kysely.js';
export { dashboard, serveDashboard, type DashboardOptions, type DashboardHandler, type ServeOptions } from './dashboard/index.js';
