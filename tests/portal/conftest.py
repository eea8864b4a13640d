from tests.portal.support import portal_user_fixture

__all__ = ["portal_user_fixture"]
