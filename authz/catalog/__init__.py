"""The catalog: what each tool behind the gateway does (its class and risk, `classes`)."""
