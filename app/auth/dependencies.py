"""FastAPI dependencies for the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth.jwt import User
from app.errors import Unauthorized


async def current_user(request: Request) -> User:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("A bearer token is required.", token_sent=False)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("The Authorization header must be 'Bearer <token>'.", token_sent=False)
    user = await request.app.state.verifier.verify(token.strip())
    request.state.user = user
    return user


CurrentUser = Annotated[User, Depends(current_user)]
