import postgres from 'postgres';

export type Sql = postgres.Sql<Record<string, never>>;
export type TransactionSql = postgres.TransactionSql<Record<string, never>>;

export interface ConnectOptions {
  max?: number;
  /** Application name shown in pg_stat_activity. */
  name?: string;
}

/** A postgres.js pool with the settings every durably connection uses. */
export function connect(url: string, options: ConnectOptions = {}): Sql {
  return postgres(url, {
    max: options.max ?? 10,
    onnotice: () => {},
    connection: { application_name: options.name ?? 'durably' },
    // Connections are recycled now and then so that one broken by a server
    // restart or failover does not stay in the pool for long.
    max_lifetime: 60 * 30,
    idle_timeout: 60,
  }) as unknown as Sql;
}

/** The url to use when none is given. */
export function defaultUrl(): string | undefined {
  return process.env.DATABASE_URL || undefined;
}
