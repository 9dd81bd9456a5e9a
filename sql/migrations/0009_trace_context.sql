-- Trace context of an invocation: the W3C carrier ({"traceparent": ...,
-- "tracestate": ...}) that was active where it was invoked, so each execution
-- attempt, in whichever process and after any number of crashes, continues
-- that trace. Null when the invoker traced nothing. Not indexed: writing it
-- keeps settlements HOT.
alter table durably.promises add column trace_context jsonb;

