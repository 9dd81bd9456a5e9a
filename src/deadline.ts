/** `p`, or after `ms` a QUERY_TIMEOUT error (transient: see isTransient). */
export function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(Object.assign(new Error(`the query did not answer within ${ms} ms`), { code: 'QUERY_TIMEOUT' })), ms);
    timer.unref();
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}
