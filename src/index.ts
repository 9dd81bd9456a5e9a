export { Durably, type DurablyConfig, type RegisterOptions } from './durably.js';
export { Context, type Future, type ExternalPromise, type StepFunction } from './context.js';
export { DurableHandle, type PromiseRecord, type PromiseState } from './promises.js';
export { options, parseTarget, type CallOptions, type Options } from './options.js';
export type { RetryPolicy } from './retry.js';
export { migrate } from './migrate.js';
export {
  DurablyError, InvalidArgumentError, NotFoundError, AlreadyExistsError, UnknownFunctionError, NonDeterminismError,
  PromiseRejectedError, type ErrorValue,
} from './errors.js';
export { ScheduleHandle, type ScheduleRecord, type Recurrence, type OverlapPolicy, type CatchupPolicy } from './schedules.js';
export {
  invokeInKysely, type DurablyDatabase, type InvokeResult, type PromiseListRow, type TaskListRow, type ScheduleListRow,
  type WorkerStatusRow,
} from './kysely.js';
