"""Pure policy: canonical paths, routes, the decision core and route analysis. No aiohttp."""
