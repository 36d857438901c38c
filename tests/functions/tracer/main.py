def handler(event, context):
    """Tells the trace context it was given: in the event's headers (HTTP trigger)
    and on the context object (both triggers)."""
    headers = event.get("headers", {}) if isinstance(event, dict) else {}
    return {
        "header": headers.get("traceparent"),
        "header_state": headers.get("tracestate"),
        "context": context.traceparent,
        "context_state": context.tracestate,
    }
